"""Prefect flow `step-jepa-sweep`: K x lambda training runs (+ the SFT baseline per seed),
each its own `accelerate launch` process, evaluated on GSM8K; the best config's model
is registered in MLflow with alias `champion`.

    python -m pipelines.sweep --params params.yaml            # what the DVC stage runs
    python -m pipelines.sweep --serve                          # a UI-triggerable deployment

Only orchestration lives here: what to run (`stepjepa.sweep`), how to launch it
(`stepjepa.launch`), the statistics and plots (`stepjepa.report`) and MLflow
(`stepjepa.tracking`) are library code.
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model
# from real annotations, and a served deployment cannot resolve string ones (`Literal`).
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from stepjepa import launch, report, tracking
from stepjepa.config import ConfigError, SweepConfig, config_from_dict, load_config
from stepjepa.sweep import RunSpec, cache_key, data_fingerprint, eval_cache_key, expand_grid, resolve

SLOTS: launch.DeviceSlots | None = None  # set by the flow before any task runs

def _by_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["key"]

@task(cache_key_fn=_by_key, persist_result=True, task_run_name="train {spec[name]}")
def train_run(spec: dict, key: str, paths: dict, child_run_id: str) -> dict:
    """One training run in its own process; resumes a checkpoint left by a killed sweep."""
    out = Path(paths["runs"]) / f"{spec['name']}-{key[:8]}"  # a changed config or data never resumes an old run
    logger = get_run_logger()
    with SLOTS.acquire() as gpu:
        cmd = launch.train_command(Path(paths["params"]), Path(paths["train_data"]), out, list(spec["overrides"]),
                                   gpu, resume=True, run_name=spec["name"])
        launch.run_logged(cmd, launch.device_env(gpu, {"MLFLOW_RUN_ID": child_run_id}), out / "train.log",
                          on_progress=lambda text: logger.info("%s %s", spec["name"], text))
    return {"model_dir": str(out / "model"), "run_dir": str(out), "run_id": child_run_id}

@task(cache_key_fn=_by_key, persist_result=True, task_run_name="evaluate {spec[name]}")
def evaluate_run(spec: dict, key: str, trained: dict, paths: dict, eval_args: list[str]) -> dict:
    """GSM8K accuracy of one trained model, logged into its MLflow run."""
    out = Path(trained["run_dir"]) / "eval"
    with SLOTS.acquire() as gpu:
        cmd = [sys.executable, "-m", "stepjepa.cli", "evaluate", "--model", trained["model_dir"],
               "--data", paths["test_data"], "--params", paths["params"], "--out", str(out),
               "--mlflow-run-id", trained["run_id"], "--no-progress", *eval_args]
        launch.run_logged(cmd, launch.device_env(gpu), out / "evaluate.log")
    return report.read_run_result(Path(trained["run_dir"]))

@flow(name="step-jepa-config", log_prints=True)
def step_jepa_config(spec: dict, key: str, paths: dict, child_run_id: str, eval_args: list[str]) -> dict:
    """One config, trained and evaluated: what a work-pool worker runs for the sweep."""
    global SLOTS
    SLOTS = SLOTS or launch.DeviceSlots(launch.visible_gpus())
    # Paths are relative to the sweep's folder. A worker on the same machine works there; a
    # worker elsewhere (a cluster image) has no such folder and uses its own checkout.
    if Path(paths["workdir"]).is_dir():
        os.chdir(paths["workdir"])
    trained = train_run.fn(spec, key, paths, child_run_id)
    return evaluate_run.fn(spec, key, trained, paths, eval_args)

def _by_eval_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["eval_key"]

@task(cache_key_fn=_by_eval_key, persist_result=True, task_run_name="dispatch {spec[name]}")
def dispatch_run(spec: dict, key: str, eval_key: str, paths: dict, child_run_id: str, eval_args: list[str],
                 deployment: str) -> dict:
    """One config as a flow run on a work pool; its result comes back through MLflow, which
    the worker and this process share (their file systems need not be shared)."""
    from prefect.deployments import run_deployment

    params = dict(spec=spec, key=key, paths=paths, child_run_id=child_run_id, eval_args=eval_args)
    flow_run = run_deployment(deployment, parameters=params, timeout=None, as_subflow=True)
    if not flow_run.state.is_completed():
        raise launch.RunFailed(f"flow run {flow_run.name} of {deployment} ended {flow_run.state.name}: "
                               f"{flow_run.state.message}")
    return tracking.run_result(child_run_id)

@flow(name="step-jepa-sweep", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def step_jepa_sweep(
    ks: list[int] | None = None,
    lambdas: list[float] | None = None,
    seeds: list[int] | None = None,
    layout: Literal["inline", "two_pass", "packed"] | None = None,
    loss: Literal["cosine", "l2", "mse", "infonce"] | None = None,
    overrides: dict[str, Any] | None = None,
    max_concurrent: int | None = None,
    retries: int | None = None,
    launcher: Literal["local", "work_pool"] | None = None,
    params_file: str = "params.yaml",
    runs_dir: str = "runs/sweep",
    report_dir: str = "metrics/sweep",
) -> dict:
    """Parameters left empty come from the `sweep` section of `params_file`."""
    global SLOTS
    logger = get_run_logger()
    base = yaml.safe_load(Path(params_file).read_text())
    given = {k: v for k, v in dict(ks=ks, lambdas=lambdas, seeds=seeds, layout=layout, loss=loss, overrides=overrides,
                                   max_concurrent=max_concurrent, retries=retries,
                                   launcher=launcher).items() if v is not None}
    sweep = config_from_dict(base | {"sweep": base.get("sweep", {}) | given}, params_file).sweep
    specs = expand_grid(sweep)
    configs = {s.name: resolve(base, s) for s in specs}  # every run validated before any trains
    paths = {"workdir": str(Path.cwd()), "params": params_file, "runs": runs_dir, "train_data": "data/tokenized/train.parquet",
             "test_data": f"data/prepared/{configs[specs[0].name].eval.split}.jsonl"}
    # Cached results name run folders and MLflow runs: they are valid only for this store and folder.
    fingerprint = "|".join([data_fingerprint([paths["train_data"], paths["test_data"],
                                              configs[specs[0].name].model.name_or_path]),
                            tracking.tracking_uri(), str(Path(runs_dir).resolve())])
    SLOTS = launch.DeviceSlots(launch.visible_gpus(), cpu_slots=sweep.max_concurrent or 1)
    logger.info("sweep of %d runs (%d at a time): %s", len(specs), SLOTS.size, ", ".join(configs))

    with tracking.sweep_run(sweep.experiment, sweep.model_dump(mode="json") | {"runs": len(specs)}) as parent:
        futures = {}
        for spec in specs:
            key, eval_key = cache_key(configs[spec.name], fingerprint), eval_cache_key(configs[spec.name], fingerprint)
            child = tracking.child_run(sweep.experiment, parent, spec.name, key)
            spec_d = spec.as_dict() | {"overrides": [*spec.overrides, f"train.experiment={sweep.experiment}"]}
            eval_args = launch.eval_args(configs[spec.name].eval)
            if sweep.launcher == "work_pool":
                trained = evaluated = dispatch_run.with_options(retries=sweep.retries).submit(
                    spec_d, key, eval_key, paths, child, eval_args, sweep.config_deployment)
            else:
                trained = train_run.with_options(retries=sweep.retries).submit(spec_d, key, paths, child)
                evaluated = evaluate_run.submit(spec_d, eval_key, trained, paths, eval_args)
            futures[spec.name] = (child, trained, evaluated)
        wait([f for _, *pair in futures.values() for f in pair])
        results = [_collect(spec, *futures[spec.name], logger) for spec in specs]
        return _finish(sweep, parent, results, Path(report_dir))

def _collect(spec: RunSpec, child: str, trained, evaluated, logger) -> dict:
    """The run's result, or a FAILED record (in Prefect and MLflow) that keeps the sweep going."""
    if evaluated.state.is_completed():
        return {"spec": spec.as_dict(), "status": "completed", "run_id": child} | evaluated.result()
    failed = trained if not trained.state.is_completed() else evaluated
    message = failed.state.message or failed.state.name
    logger.error("%s failed: %s", spec.name, message)
    tracking.mark_failed(child, message)
    return {"spec": spec.as_dict(), "status": "failed", "run_id": child, "error": message[-2000:]}

def _finish(sweep: SweepConfig, parent: str, results: list[dict], report_dir: Path) -> dict:
    rows = report.summarize(results)
    best = report.best_config(rows)
    table = report.markdown_table(rows)
    plots = [report.plot_heatmap(rows, report_dir / "heatmap.png"),
             report.plot_loss_curves(results, report_dir / "loss_curves.png")]
    summary = report.summary_metrics(rows, best)
    champion = None
    if best is not None:
        winner = report.champion_run(results, best)
        champion = tracking.register_champion(sweep.registered_model_name, winner["run_id"], best)
    summary["champion"] = champion
    tracking.log_sweep_summary(parent, rows, table, plots, summary)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (report_dir / "table.md").write_text(table + "\n")
    report.write_plot_data(rows, results, report_dir)
    create_markdown_artifact(table, key="step-jepa-sweep", description="GSM8K accuracy per K x lambda config")
    return summary

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--runs-dir", default="runs/sweep")
    parser.add_argument("--report-dir", default="metrics/sweep")
    parser.add_argument("--serve", action="store_true", help="serve a deployment the Prefect UI can trigger")
    parser.add_argument("--name", default="gsm8k", help="deployment name (with --serve or --deploy)")
    parser.add_argument("--deploy", metavar="POOL",
                        help="deploy the per-config flow `step-jepa-config/NAME` to this work pool and exit")
    args = parser.parse_args(argv)
    try:
        load_config(args.params)  # fail on a bad params file before Prefect starts
    except ConfigError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    params = {"params_file": args.params, "runs_dir": args.runs_dir, "report_dir": args.report_dir}
    if args.deploy:
        # The worker runs the flow from this checkout (a process pool); a docker or kubernetes
        # pool runs the same entrypoint inside the worker image (docs/scaling-out.md).
        checkout = str(Path(__file__).resolve().parents[1])
        step_jepa_config.from_source(source=checkout, entrypoint="pipelines/sweep.py:step_jepa_config") \
            .deploy(name=args.name, work_pool_name=args.deploy)
        return 0
    if args.serve:
        step_jepa_sweep.serve(name=args.name, parameters=params)
        return 0
    summary = step_jepa_sweep(**params)
    return 0 if summary.get("champion") else 1

if __name__ == "__main__":
    raise SystemExit(main())
