"""Prefect flow `step-jepa-sweep`: K x lambda training runs (+ the SFT baseline per seed),
each its own `accelerate launch` process, evaluated on the **validation** split; the best
config by validation accuracy (and the SFT baseline) is then evaluated once on **test**, and
its model is registered in MLflow with alias `champion`.

    python -m pipelines.sweep --params params.yaml --tokenized data/tokenized \
        --prepared data/prepared --runs-dir runs/sweep --report-dir metrics/sweep  # the DVC stage
    python -m pipelines.sweep --reconcile      # register the champion of the run folders in
                                               # this MLflow store
    python -m pipelines.sweep --serve          # a UI-triggerable deployment (runs in runs/store)

Paths come from the command line (dvc.yaml names them; the defaults are the same paths), the
sweep's choices from the params file's `sweep` section, or from the flow run's `sweep`
parameter, field by field.

The run folders (`runs/sweep/<config>_s<seed>-<key>/`) are the sweep's products, a DVC
out: a config whose folder holds a finished model (and evaluation) is not trained (or
evaluated) again, whichever machine, tracking store or Prefect server asks. MLflow is
brought up to date from the folders when it lacks a run (a new store, another server).
`runs/sweep` holds exactly the params file's sweep; every other sweep (a served deployment's)
works in the run store `runs/store` and reuses the stage's runs without writing into them
(`stepjepa.sweep.runstore`).

Only orchestration lives here: what to run (`stepjepa.sweep.specs`), how to launch it
(`stepjepa.training.launch`), the statistics and plots (`stepjepa.sweep.report`) and MLflow
(`stepjepa.tracking`) are library code.
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model
# from real annotations, and a served deployment cannot resolve string ones (`SweepChoices`).
import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

# Prefect reads its settings when it is imported. On a loaded machine its temporary server
# can take longer than the default 20 s to start; wait longer rather than fail the sweep.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.futures import wait  # noqa: E402
from prefect.states import Failed  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402
from prefect.utilities.annotations import allow_failure  # noqa: E402

from pipelines.prefect_server import start_temporary_server  # noqa: E402
from stepjepa import tracking
from stepjepa.config import ConfigError, SweepConfig, config_from_dict, load_config, write_config
from stepjepa.inputs import InputError, require_files
from stepjepa.sweep import plots, report, runstore
from stepjepa.sweep import specs as plan  # noqa: E402
from stepjepa.sweep.specs import RunResult, SweepChoices
from stepjepa.training import launch  # noqa: E402
from stepjepa.vocabulary import SFT

SELECT_SPLIT, TEST_SPLIT = "validation", "test"
# The sweep stage's DVC out (dvc.yaml), and the run store of every other sweep (docs/sweeps.md).
STAGE_RUNS, STORE = "runs/sweep", "runs/store"
UNLOGGED = "unlogged.json"  # in the report folder: what MLflow still lacks (`_note_unlogged`)


# Not cached by Prefect: the run folders are the cache (named by `stepjepa.sweep.specs`'s keys,
# whichever machine or Prefect server asks), and the device slots a task is handed (a
# queue with its locks) cannot be hashed into a Prefect cache key.
@task(name="train", task_run_name="train {spec[name]}", cache_policy=NO_CACHE)
def train_run(
    spec: dict,
    run_dir: str,
    paths: dict,
    child_run_id: str | None,
    slots: launch.DeviceSlots,
    eval_key: str | None = None,
    config: dict | None = None,
    cwd: str | None = None,
    unlogged: tracking.Unlogged | None = None,
) -> dict:
    """One training run in its own process; resumes a checkpoint left by a killed sweep, and
    trains nothing when the run folder already holds the finished model. With `eval_key`
    and `config`, the same process then evaluates the model on validation (what
    `evaluate_run` would start a second process for). The process waits for a device of
    `slots` and runs in `cwd` (default: this process's folder). Without a `child_run_id` (MLflow
    was unreachable when the sweep started) the run records itself in its folder, which the
    next sweep sends; `unlogged` collects what could not be logged."""
    out, logger = Path(run_dir), get_run_logger()
    if plan.is_trained(out):
        logger.info("%s: trained already (%s)", spec["name"], out)
        if child_run_id is not None:
            data = {
                "training": Path(paths["train_data"]),
                "validation": Path(paths["tokenized"]) / f"{SELECT_SPLIT}.parquet",
            }
            _tracked(
                unlogged,
                f"the training of {spec['name']}",
                lambda: tracking.backfill_training(child_run_id, out, data=data),
            )
        return {"run_dir": run_dir, "run_id": child_run_id}
    evaluate = None
    if eval_key is not None and config is not None:
        shutil.rmtree(out / "eval", ignore_errors=True)  # a model trained anew: any old results are not its own
        folder = plan.eval_folder(out, SELECT_SPLIT, eval_key)
        write_config(config_from_dict(config), folder / "config.yaml")
        evaluate = (
            folder,
            Path(paths["prepared"]) / f"{SELECT_SPLIT}.jsonl",
            Path(paths["tokenized"]) / f"{SELECT_SPLIT}.parquet",
        )
    with slots.acquire() as gpu:
        cmd = launch.train_command(
            out / "config.yaml",
            Path(paths["train_data"]),
            out,
            gpu,
            resume=True,
            run_name=spec["name"],
            val_data=Path(paths["tokenized"]) / f"{SELECT_SPLIT}.parquet",
            evaluate=evaluate,
        )
        run = {"MLFLOW_RUN_ID": child_run_id} if child_run_id else {"STEPJEPA_MLFLOW_OFFLINE": "1"}
        launch.run_logged(
            cmd,
            slots.env(gpu, run),
            out / "train.log",
            cwd=cwd,
            on_progress=lambda text: logger.info("%s %s", spec["name"], text),
        )
    if evaluate and (evaluate[0] / "metrics.json").is_file():
        plan.mark_evaluated(out, SELECT_SPLIT, eval_key)
    if child_run_id is not None:
        if unlogged is not None and tracking.offline_pending(out):  # MLflow went away before it started
            unlogged.add(f"the training of {spec['name']}", f"recorded in {out / 'mlflow-offline.jsonl'}")
        tracking.log_run_files(child_run_id, out)
    return {"run_dir": run_dir, "run_id": child_run_id}


@task(name="evaluate", task_run_name="evaluate {spec[name]} on {split}", cache_policy=NO_CACHE)  # as train_run
def evaluate_run(
    spec: dict,
    trained: dict,
    split: str,
    eval_key: str,
    paths: dict,
    config: dict,
    slots: launch.DeviceSlots,
    cwd: str | None = None,
    unlogged: tracking.Unlogged | None = None,
    home: str | None = None,
    elsewhere: tuple[str, ...] = (),
) -> dict:
    """Accuracy, held-out NLL and view diagnostics of one trained model on `split`, logged
    into its MLflow run under `split/`; nothing is generated again for a folder that has them.

    `home` is where this sweep may write (default: the trained run folder) and `elsewhere`
    other sweeps' folders of the same run, read only: an evaluation found in any of them is
    reused; a new one of a run trained elsewhere is made on a linked copy in `home`."""
    places = list(dict.fromkeys(Path(p) for p in (trained["run_dir"], home or trained["run_dir"], *elsewhere)))
    run_dir = next((p for p in places if plan.is_evaluated(p, split, eval_key)), None)
    if run_dir is None:
        run_dir = Path(home or trained["run_dir"])
        if run_dir != Path(trained["run_dir"]) and not plan.is_trained(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
            runstore.linked_copy(Path(trained["run_dir"]), run_dir)
            get_run_logger().info("%s: evaluating a linked copy in %s", spec["name"], run_dir)
    out = plan.eval_folder(run_dir, split, eval_key)
    if not plan.is_evaluated(run_dir, split, eval_key):
        config_file = write_config(config_from_dict(config), out / "config.yaml")
        with slots.acquire() as gpu:
            cmd = launch.evaluate_command(
                run_dir / "model",
                config_file,
                Path(paths["prepared"]) / f"{split}.jsonl",
                out,
                heldout=Path(paths["tokenized"]) / f"{split}.parquet",
            )
            launch.run_logged(
                cmd,
                slots.env(gpu),
                out / "evaluate.log",
                cwd=cwd,
                on_progress=lambda text: get_run_logger().info("%s %s", spec["name"], text),
            )
        plan.mark_evaluated(run_dir, split, eval_key)
    else:
        get_run_logger().info("%s: %s evaluated already with these settings (%s): reused", spec["name"], split, out)
    if trained["run_id"] is not None:
        _tracked(
            unlogged,
            f"the {split} results of {spec['name']}",
            lambda: tracking.log_split(trained["run_id"], split, out),
        )
    return report.read_run_result(run_dir, out)


def _tracked(unlogged: tracking.Unlogged | None, what: str, call):
    """`call()`, a tracking call: through `unlogged` when the sweep collects what it could not log."""
    return unlogged.attempt(what, call) if unlogged is not None else call()


@task(name="start", task_run_name="start {spec[name]} in MLflow", cache_policy=NO_CACHE)  # as train_run
def start_child(
    spec: dict, experiment: str, parent: str, key: str, run_dir: str, unlogged: tracking.Unlogged | None = None
) -> str | None:
    """The config's MLflow run, created just before its training starts, so that its start
    time and duration are its own (not the wait for a device); None when MLflow cannot be
    reached: the run then records itself in its folder (`train_run`)."""
    return _tracked(
        unlogged,
        f"the run of {spec['name']}",
        lambda: tracking.child_run(experiment, parent, spec["name"], key, Path(run_dir)),
    )


@flow(name="step-jepa-config", log_prints=True)
def step_jepa_config(
    spec: dict,
    run_dir: str,
    paths: dict,
    child_run_id: str,
    split: str,
    eval_key: str,
    config: dict,
    workdir: str,
    home: str | None = None,
) -> None:
    """One config on a work-pool worker: trained (unless its folder holds the model) and
    evaluated on `split`; the sweep reads the results back from MLflow. `home`: the sweep's
    own folder of a run it reuses from another sweep's (`evaluate_run`)."""
    # Paths are relative to the sweep's folder. A worker on the same machine works there; a
    # worker elsewhere (a cluster image) has no such folder and uses its own checkout. The
    # runs' processes work there too: their configs name the model by a relative path.
    here = Path(workdir) if Path(workdir).is_dir() else Path.cwd()
    run_dir, paths = str(here / run_dir), {name: str(here / path) for name, path in paths.items()}
    slots = launch.DeviceSlots(launch.visible_gpus())
    trained = train_run.fn(
        spec,
        run_dir,
        paths,
        child_run_id,
        slots,
        *((eval_key, config) if split == SELECT_SPLIT else (None, None)),
        cwd=str(here),
    )
    where = {"home": str(here / home)} if home else {}
    evaluate_run.fn(spec, trained, split, eval_key, paths, config, slots, cwd=str(here), **where)


@task(name="dispatch", task_run_name="dispatch {spec[name]} ({split})")
def dispatch_run(
    spec: dict,
    run_dir: str,
    paths: dict,
    child_run_id: str,
    split: str,
    eval_key: str,
    config: dict,
    deployment: str,
    home: str | None = None,
) -> dict:
    """One config as a flow run on a work pool; its result comes back through MLflow, which
    the worker and this process share (their file systems need not be shared)."""
    from prefect.deployments import run_deployment

    params = dict(
        spec=spec,
        run_dir=run_dir,
        paths=paths,
        child_run_id=child_run_id,
        split=split,
        eval_key=eval_key,
        config=config,
        workdir=str(Path.cwd()),
    ) | ({"home": home} if home else {})
    flow_run = run_deployment(deployment, parameters=params, timeout=None, as_subflow=True)
    if not flow_run.state.is_completed():
        raise launch.RunFailed(
            f"flow run {flow_run.name} of {deployment} ended {flow_run.state.name}: {flow_run.state.message}"
        )
    return tracking.run_result(child_run_id, split, report.read_eval_folder)


@flow(name="step-jepa-sweep", task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)
def step_jepa_sweep(
    *,
    sweep: SweepChoices = SweepChoices(),
    params_file: str,
    tokenized: str,
    prepared: str,
    runs_dir: str,
    report_dir: str,
    store: str | None = None,
    reuse: list[str] | None = None,
) -> dict:
    """The sweep of `params_file`'s `sweep` section, with the fields of `sweep` that are set
    in place of the file's.

    Args:
        sweep: The sweep's choices (grid, loss, layout, overrides, concurrency, ...): each field
            says what it means and its default; an empty one comes from params_file.
        params_file: The params file of every run, and of the choices left empty, relative to
            the sweep's folder.
        tokenized: The tokenize stage's folder of {split}.parquet rows: train is trained on;
            validation and test give held-out NLL.
        prepared: The prepare stage's folder of {split}.jsonl questions: validation selects
            the champion; test is read once.
        runs_dir: Folder of the run folders this sweep trains and evaluates in; a finished run
            there is reused, not trained again. The DVC stage's is runs/sweep (its out); every
            other sweep's, a served deployment's included, the run store runs/store.
        report_dir: Where the table, summary and plots go (metrics/sweep is DVC's; a served
            deployment uses reports/NAME).
        store: The DVC stage only (runs_dir runs/sweep): the run store, from which finished runs
            are taken instead of trained, and to which the run folders and evaluations this
            sweep does not use are moved once it ends, so that runs_dir holds exactly this
            sweep. Empty: none.
        reuse: Other sweeps' folders of run folders (a served deployment: runs/sweep), whose
            finished runs and evaluations are reused without writing into them: a new
            evaluation of one is made on a linked copy in runs_dir.
    """
    logger = get_run_logger()
    try:
        _check_inputs(tokenized, prepared)
    except InputError as err:
        return Failed(message=str(err), data=err)  # as a bad parameter, below
    if store and Path(store).resolve() == Path(runs_dir).resolve():
        store = None  # a sweep in the store itself: nothing to take in or move out
    reuse = [folder for folder in reuse or () if Path(folder).resolve() != Path(runs_dir).resolve()]
    base = yaml.safe_load(Path(params_file).read_text())
    try:
        sweep_config = plan.choose(base, sweep, params_file)
        specs = plan.expand_grid(sweep_config)
        configs = {s.name: plan.resolve(base, s) for s in specs}  # every run validated before any trains
    except ConfigError as err:
        # A bad parameter is the caller's mistake, not the code's: the flow run fails with one
        # line naming it (no traceback in its log); calling the flow still raises it.
        return Failed(message=str(err), data=err)
    for line in plan.replaced_settings(base, sweep_config, specs, params_file):
        logger.warning(line)
    paths = {
        "train_data": str(Path(tokenized) / "train.parquet"),
        "tokenized": str(Path(tokenized)),
        "prepared": str(Path(prepared)),
    }
    first = configs[specs[0].name]
    fingerprint = plan.data_fingerprint(
        [
            Path(tokenized),
            *(Path(prepared) / f"{s}.jsonl" for s in (SELECT_SPLIT, TEST_SPLIT)),
            first.model.name_or_path,
        ]
    )
    slots = launch.DeviceSlots(launch.visible_gpus(), cpu_slots=sweep_config.max_concurrent or 1)
    logger.info("sweep of %d runs (%d at a time): %s", len(specs), slots.size, ", ".join(configs))
    tracking.init_store()
    unlogged = tracking.Unlogged()  # what MLflow could not take: printed, and the next sweep logs it

    # A flow run replaces the process's SIGTERM handler with Prefect's, which only raises in
    # this thread: the flow then waited for its runs to finish training. They hear it first,
    # checkpoint and stop (SIGINT is not Prefect's: `main`'s forwarding still has it).
    with (
        launch.forward_signals(signal.SIGTERM),
        launch.warm_starts(sweep_config.warm_start and sweep_config.launcher != "work_pool" and not slots.gpus),
        tracking.sweep_run(
            sweep_config.experiment,
            sweep_config.model_dump(mode="json") | {"runs": len(specs)},
            run_name=_sweep_name(sweep_config, _file_sweep(base, params_file), params_file),
            unlogged=unlogged,
            identity=[plan.eval_cache_key(c, fingerprint) for c in configs.values()],
        ) as parent,
    ):
        runs = {}
        for spec in specs:
            config = configs[spec.name]
            key, eval_key = plan.cache_key(config, fingerprint), plan.eval_cache_key(config, fingerprint)
            home = plan.run_folder(runs_dir, spec, key)
            if store and (taken := runstore.take_in(home, Path(store) / home.name, eval_key)):
                logger.info("taken from the run store: %s", taken)
            elsewhere = [Path(folder) / home.name for folder in reuse or ()]
            run_dir = next((p for p in (home, *elsewhere) if plan.is_trained(p)), home)
            if not plan.is_trained(run_dir):
                write_config(config, run_dir / "config.yaml")
            # A config still to train gets its MLflow run when its training starts (`start_child`):
            # its duration is its own, not the queue's. One trained before is found now.
            later = parent is not None and sweep_config.launcher == "local" and not plan.is_trained(run_dir)
            child = parent and unlogged.attempt(
                f"the run of {spec.name}",
                lambda spec=spec, key=key, run_dir=run_dir, later=later: tracking.child_run(
                    sweep_config.experiment, parent, spec.name, key, run_dir, create=not later
                ),
            )
            runs[spec.name] = dict(
                spec=spec,
                key=key,
                eval_key=eval_key,
                run_dir=str(run_dir),
                home=str(home),
                elsewhere=tuple(map(str, elsewhere)),
                child=child,
                parent=parent if later else None,
                config_key=plan.config_key(config, fingerprint),
                config=config,
            )
        validation = _train_and_evaluate(runs, specs, paths, sweep_config, slots, logger, unlogged)
        rows = report.summarize(validation)
        best = report.best_config(rows)
        tested = _test_once(runs, specs, validation, best, paths, sweep_config, slots, logger, unlogged) if best else []
        summary = _finish(sweep_config, parent, validation, tested, rows, best, runs, Path(report_dir), unlogged)
    if store:
        read = {(r.spec.name, TEST_SPLIT) for r in tested} | {(name, SELECT_SPLIT) for name in runs}
        keep = {
            Path(run["home"]).name: {(split, run["eval_key"]) for name, split in read if name == spec_name}
            for spec_name, run in runs.items()
        }
        for line in runstore.move_out(Path(runs_dir), Path(store), keep):
            logger.info("moved to the run store %s: %s", store, line)
    return summary


NAMED = ("ks", "lambdas", "seeds", "views", "layout", "loss", "axes", "design")  # what a parent's name shows


def _sweep_name(sweep: SweepConfig, file_sweep: SweepConfig | None = None, source: str = "params.yaml") -> str:
    """A parent run name that tells sweeps apart: the grid, the seeds themselves, and what
    differs from the params file's sweep section (`file_sweep`, read from `source`): the
    choices of a UI sweep or `-p sweep=...`."""
    ks = ",".join(map(str, sweep.ks))
    lams = ",".join(f"{x:g}" for x in sweep.lambdas)
    seeds = ",".join(map(str, sweep.seeds))
    axes = "".join(f" {key}={','.join(map(plan.axis_text, values))}" for key, values in sweep.axes.items())
    design = " one at a time" if sweep.design == "one_at_a_time" else ""
    name = f"sweep K={ks} lambda={lams} seeds={seeds} {'+'.join(sweep.views)} {sweep.layout}/{sweep.loss}{axes}{design}"
    if file_sweep is None:
        return name
    changed = [f for f in type(sweep).model_fields if getattr(sweep, f) != getattr(file_sweep, f)]
    said = ", ".join(
        f if f in NAMED else f"{f}={json.dumps(getattr(sweep, f), sort_keys=True, default=str)}" for f in changed
    )
    return f"{name} ({Path(source).name}{' but ' + said if said else ''})"[:250]  # MLflow's limit: 250


def _file_sweep(base: dict, params_file: str) -> SweepConfig | None:
    """The params file's own sweep section (None if only the flow's choices make it valid)."""
    try:
        return plan.choose(base, SweepChoices(), params_file)
    except ConfigError:
        return None


def _submit(
    run: dict,
    split: str,
    paths: dict,
    sweep: SweepConfig,
    slots: launch.DeviceSlots,
    trained=None,
    after=None,
    unlogged: tracking.Unlogged | None = None,
) -> tuple[Any, Any]:
    """(training future or None, evaluation future) of one run on `split`; the training (or,
    given `trained`, the evaluation) waits for the future `after` to end, however it ends."""
    spec_d, config = run["spec"].as_dict(), run["config"].model_dump(mode="json", by_alias=True)
    # Prefect names a task run `<task name>-<key>` until it starts, and by `task_run_name` only
    # then: a task named after its run reads `train k1_lam0.5_s0-557` while it waits in the queue.
    name = spec_d["name"]
    if sweep.launcher == "work_pool":  # the work pool's own concurrency decides what runs when
        return None, dispatch_run.with_options(name=f"dispatch {name} ({split})", retries=sweep.retries).submit(
            spec_d,
            run["run_dir"],
            paths,
            run["child"],
            split,
            run["eval_key"],
            config,
            sweep.config_deployment,
            home=run["home"] if run["home"] != run["run_dir"] else None,  # a run another sweep's folder holds
        )
    queue = {"wait_for": [allow_failure(after)]} if after is not None else {}
    if trained is None and run["child"] is None and run.get("parent"):  # its MLflow run starts with it
        run["child"] = start_child.with_options(name=f"start {spec_d['name']} in MLflow").submit(
            spec_d, sweep.experiment, run["parent"], run["key"], run["run_dir"], unlogged, **queue
        )
        queue = {}
    if trained is None:  # training evaluates its fresh model on the selection split in-process
        trained = train_run.with_options(name=f"train {name}", retries=sweep.retries).submit(
            spec_d,
            run["run_dir"],
            paths,
            run["child"],
            slots,
            *((run["eval_key"], config) if split == SELECT_SPLIT else ()),
            unlogged=unlogged,
            **queue,
        )
        queue = {}
    return trained, evaluate_run.with_options(name=f"evaluate {name} on {split}").submit(
        spec_d,
        trained,
        split,
        run["eval_key"],
        paths,
        config,
        slots,
        unlogged=unlogged,
        home=run["home"],
        elsewhere=run["elsewhere"],
        **queue,
    )


def _in_lanes(specs: list, submit, lanes: int) -> dict:
    """`submit(spec, after)` for each spec, where `after` is the future of the spec `lanes`
    places earlier: at most that many runs are in flight, and the rest wait in Prefect as
    Pending (visible as queued in the UI, their durations free of queue time) instead of
    Running while blocked on a device slot."""
    futures, ends = {}, []
    for index, spec in enumerate(specs):
        futures[spec.name] = submit(spec, ends[index - lanes] if index >= lanes else None)
        ends.append(futures[spec.name][1] if isinstance(futures[spec.name], tuple) else futures[spec.name])
    return futures


def _train_and_evaluate(
    runs: dict,
    specs: list,
    paths: dict,
    sweep: SweepConfig,
    slots: launch.DeviceSlots,
    logger,
    unlogged: tracking.Unlogged,
) -> list[RunResult]:
    futures = _in_lanes(
        specs,
        lambda spec, after: _submit(runs[spec.name], SELECT_SPLIT, paths, sweep, slots, after=after, unlogged=unlogged),
        slots.size,
    )
    wait([f for pair in futures.values() for f in pair if f is not None])
    return [_collect(spec, runs[spec.name], *futures[spec.name], logger, unlogged) for spec in specs]


def _test_once(
    runs: dict,
    specs: list,
    validation: list[RunResult],
    best: dict,
    paths: dict,
    sweep: SweepConfig,
    slots: launch.DeviceSlots,
    logger,
    unlogged: tracking.Unlogged,
) -> list[RunResult]:
    """The test split, read once: the champion config's runs and the SFT baseline's."""
    done = {r.spec.name for r in validation if r.completed}
    chosen = [s for s in specs if s.config_name in {best["config"], SFT} and s.name in done]
    trained = {s.name: {"run_dir": runs[s.name]["run_dir"], "run_id": runs[s.name]["child"]} for s in chosen}
    futures = _in_lanes(
        chosen,
        lambda s, after: _submit(
            runs[s.name], TEST_SPLIT, paths, sweep, slots, trained[s.name], after=after, unlogged=unlogged
        )[1],
        slots.size,
    )
    wait(list(futures.values()))
    return [_collect(s, runs[s.name], None, futures[s.name], logger, unlogged) for s in chosen]


def _collect(spec, run: dict, trained, evaluated, logger, unlogged: tracking.Unlogged | None = None) -> RunResult:
    """The run's result, or a FAILED record (in Prefect and MLflow) that keeps the sweep going."""
    if run["child"] is not None and not isinstance(run["child"], str):  # a future: created when its training started
        child = run["child"].result(raise_on_failure=False) if run["child"].state.is_completed() else None
        run["child"] = child if isinstance(child, str) else None
    base = {"spec": spec, "run_id": run["child"], "run_folder": Path(run["run_dir"]).name}
    if evaluated.state.is_completed():
        return RunResult(status="completed", **base, **evaluated.result())
    failed = trained if trained is not None and not trained.state.is_completed() else evaluated
    message = failed.state.message or failed.state.name
    error = failed.state.result(raise_on_failure=False) if failed.state.is_failed() else None
    if isinstance(error, launch.RunFailed) and error.stopped:
        # Preempted (SIGTERM/SIGINT): the run checkpointed and its MLflow run is KILLED; the
        # next sweep resumes it. Not a failure to overwrite.
        logger.warning("%s was stopped by a signal; it resumes from its checkpoint next time", spec.name)
        return RunResult(status="stopped", error=message[-2000:], **base)
    logger.error("%s failed: %s", spec.name, message)
    if run["child"] is not None:
        _tracked(unlogged, f"the failure of {spec.name}", lambda: tracking.mark_failed(run["child"], message))
    return RunResult(status="failed", error=message[-2000:], **base)


def _warn(rows: list[dict], validation: list[RunResult], unlogged: tracking.Unlogged | None = None) -> None:
    """Collapse warnings in the log and as an MLflow tag on each run of the config."""
    logger = get_run_logger()
    for row in rows:
        if row.get("warnings"):
            text = "; ".join(row["warnings"])
            logger.warning("%s: %s", row["config"], text)
            for r in validation:
                if r.spec.config_name == row["config"] and r.completed and r.run_id:
                    _tracked(
                        unlogged,
                        f"the warning on {r.spec.name}",
                        lambda r=r, text=text: tracking.set_tags(r.run_id, {"stepjepa.warning": text}),
                    )


def _finish(
    sweep: SweepConfig,
    parent: str | None,
    validation: list[RunResult],
    tested: list[RunResult],
    rows: list[dict],
    best: dict | None,
    runs: dict,
    report_dir: Path,
    unlogged: tracking.Unlogged,
) -> dict:
    _warn(rows, validation, unlogged)
    test_row = report.compare_on_test(tested, best) if best else None
    table = report.markdown_table(rows, test_row)
    report_dir.mkdir(parents=True, exist_ok=True)
    figures = [
        plots.plot_heatmap(rows, report_dir / "heatmap.png"),
        plots.plot_loss_curves(validation, report_dir / "loss_curves.png"),
        plots.plot_effects(rows, report_dir / "effects.png"),
    ]
    summary = report.summary_metrics(rows, best, test_row)
    champion = None
    if best is not None:
        winner = report.champion_run(validation, best)
        if winner.run_id is not None:  # else MLflow was down at the start: the next sweep registers it
            champion = _tracked(
                unlogged,
                "the champion's registration",
                lambda: _register(sweep, parent, validation, best, test_row, winner, runs),
            )
        # The sweep's selected run, to register: whether it became the champion is the state of
        # an MLflow store, said by `registry` (the flow's log and artifact), not a DVC result.
        summary["champion"] = {
            "name": sweep.registered_model_name,
            "config": best["config"],
            "run_folder": winner.run_folder,
        }
    registry = _registry_outcome(best, champion)
    get_run_logger().info("registry: %s", registry)
    if parent is not None:
        _tracked(
            unlogged,
            "the sweep's summary",
            lambda: tracking.log_sweep_summary(parent, rows, table, figures, summary | {"registry": registry}),
        )
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (report_dir / "table.md").write_text(table + "\n")
    report.write_plot_data(rows, validation, report_dir)
    create_markdown_artifact(
        f"{table}\n\n**Registry:** {registry}\n",
        key="step-jepa-sweep",
        description="Validation selection, test once: the sweep",
    )
    failed = [r.spec.name for r in validation if not r.completed]  # failed or stopped
    _note_unlogged(report_dir, unlogged.items)
    return summary | {
        "failed": failed,
        "champion_version": champion and champion["version"],
        "registry": registry,
        "unlogged": unlogged.items,
    }


def _register(
    sweep: SweepConfig,
    parent: str | None,
    validation: list[RunResult],
    best: dict,
    test_row: dict | None,
    winner: RunResult,
    runs: dict,
) -> dict:
    """Register the sweep's best run; the champion alias moves only on evidence: the best
    against the champion's config where this sweep trained and evaluated it too
    (`report.versus_champion`), or when `sweep.promote` asks (`tracking.registry.decide`)."""
    current = tracking.current_champion(sweep.registered_model_name)
    held = current and next(
        (
            r["spec"].config_name
            for r in runs.values()
            if r.get("config_key") == current.get("config_key") or Path(r["run_dir"]).name == current.get("run_folder")
        ),
        None,
    )
    return tracking.register_champion(
        sweep.registered_model_name,
        winner.run_id,
        best,
        test_row,
        run_dir=Path(runs[winner.spec.name]["run_dir"]),
        versus=report.versus_champion(validation, best["config"], held) if held else None,
        promote=sweep.promote,
        config_key=runs[winner.spec.name].get("config_key", ""),
        sweep=parent or "",
    )


def _registry_outcome(best: dict | None, champion: dict | None) -> str:
    """What happened to the registry, in one line."""
    if best is None:
        return "nothing registered: no config completed"
    if champion is None:
        return "not registered: MLflow could not be reached; the next sweep or --reconcile registers the best"
    return champion["outcome"]


def _note_unlogged(report_dir: Path, items: list[str]) -> None:
    """`report_dir/unlogged.json` lists what MLflow still lacks, so that `--reconcile` logs it even
    when the champion is registered; gone once everything is logged. (Not a DVC out: it
    says where MLflow stands, not what the sweep computed.)"""
    note = report_dir / UNLOGGED
    if items:
        note.write_text(json.dumps({"tracking_uri": tracking.tracking_uri(), "unlogged": items}, indent=2) + "\n")
    else:
        note.unlink(missing_ok=True)


def reconcile(params_file: str, report_dir: str, **flow_params: Any) -> int:
    """Make this MLflow store hold the champion that `report_dir/summary.json` names, from the
    run folders: a no-op when it does; otherwise the sweep runs, trains nothing that is
    already in `runs_dir`, and registers it."""
    cfg = load_config(params_file)
    summary = json.loads((Path(report_dir) / "summary.json").read_text())
    wanted = (summary.get("champion") or {}).get("run_folder")
    unlogged = (Path(report_dir) / UNLOGGED).is_file()  # a sweep that could not reach MLflow left work
    if wanted and not unlogged and tracking.champion_registered(cfg.sweep.registered_model_name, wanted):
        print(
            f"the sweep's selected model ({wanted}) is registered in {tracking.tracking_uri()} "
            f"(a version of {cfg.sweep.registered_model_name})"
        )
        return 0
    lacks = (
        f"what {Path(report_dir) / UNLOGGED} lists: logging it"
        if unlogged
        else f"the sweep's selected model {wanted}: registering it"
    )
    print(f"the MLflow store {tracking.tracking_uri()} lacks {lacks} from the run folders")
    _check_inputs(flow_params["tokenized"], flow_params["prepared"])
    return _exit_code(step_jepa_sweep(params_file=params_file, report_dir=report_dir, **flow_params))


def _check_inputs(tokenized: str, prepared: str) -> None:
    """The data stages' outputs every run of a sweep reads: all there, or one `InputError`
    before anything starts (without them every run would fail in its own training process and
    the report would become a table of failed runs)."""
    require_files(
        [Path(tokenized) / f"{split}.parquet" for split in ("train", SELECT_SPLIT, TEST_SPLIT)]
        + [Path(prepared) / f"{split}.jsonl" for split in (SELECT_SPLIT, TEST_SPLIT)],
        "the data stages' outputs: run `dvc repro`, or `dvc pull` them; nothing was trained",
    )


def _exit_code(summary: dict) -> int:
    """Non-zero when a config failed (after the others were reported), so that `dvc repro`
    records no success and the next run retries exactly the failed configs."""
    if summary.get("unlogged"):  # MLflow was unreachable: what it lacks is computed and kept
        print(
            f"sweep: not yet logged to MLflow at {tracking.tracking_uri()}: {'; '.join(summary['unlogged'])}. "
            "Nothing is lost (run folders, report); the next sweep or `python -m pipelines.sweep --reconcile` "
            "logs it",
            file=sys.stderr,
        )
    if summary.get("failed"):
        print(f"sweep: {len(summary['failed'])} run(s) failed: {', '.join(summary['failed'])}", file=sys.stderr)
        return 1
    return 0 if summary.get("champion") and not summary.get("unlogged") else 1


def _run_places(runs_dir: str, store: str) -> dict:
    """The DVC stage's sweep is assembled from the store; any other reuses both places."""
    if Path(runs_dir) == Path(STAGE_RUNS):
        return {"store": store, "reuse": []}
    return {"store": None, "reuse": [d for d in (STAGE_RUNS, store) if Path(d) != Path(runs_dir)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # The defaults are the paths dvc.yaml's sweep stage passes: `make run`'s --reconcile and a
    # served deployment then read and write what the stage does.
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--tokenized", default="data/tokenized", help="the tokenize stage's {split}.parquet folder")
    parser.add_argument("--prepared", default="data/prepared", help="the prepare stage's {split}.jsonl folder")
    parser.add_argument(
        "--runs-dir",
        help=f"default: {STAGE_RUNS} (the DVC stage's out); {STORE} with --serve. The stage's folder is "
        "assembled from the store (finished runs taken, others moved there); any other folder reuses "
        "the stage's and the store's finished runs without writing into them",
    )
    parser.add_argument("--store", default=STORE, help="the run store shared by every sweep that is not the DVC stage")
    parser.add_argument(
        "--report-dir",
        help="default: metrics/sweep (DVC's); reports/NAME with --serve, so that a "
        "sweep started from the UI leaves DVC's tracked outputs alone",
    )
    parser.add_argument(
        "--reconcile",
        action="store_true",
        help="register the champion named by REPORT_DIR/summary.json if this MLflow store lacks it",
    )
    parser.add_argument("--serve", action="store_true", help="serve a deployment the Prefect UI can trigger")
    parser.add_argument("--name", default="gsm8k", help="deployment name (with --serve or --deploy)")
    parser.add_argument(
        "--deploy", metavar="POOL", help="deploy the per-config flow `step-jepa-config/NAME` to this work pool and exit"
    )
    args = parser.parse_args(argv)
    try:
        load_config(args.params)  # fail on a bad params file before Prefect starts
    except ConfigError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2
    report_dir = args.report_dir or (f"reports/{args.name}" if args.serve else "metrics/sweep")
    runs_dir = args.runs_dir or (STORE if args.serve else STAGE_RUNS)
    params = {
        "params_file": args.params,
        "tokenized": args.tokenized,
        "prepared": args.prepared,
        "runs_dir": runs_dir,
        "report_dir": report_dir,
    } | _run_places(runs_dir, args.store)
    if args.deploy:
        # The worker runs the flow from this checkout (a process pool); a docker or kubernetes
        # pool runs the same entrypoint inside the worker image (docs/scaling-out.md).
        checkout = str(Path(__file__).resolve().parents[1])
        step_jepa_config.from_source(source=checkout, entrypoint="pipelines/sweep.py:step_jepa_config").deploy(
            name=args.name, work_pool_name=args.deploy
        )
        return 0
    # kill -9 of the sweep also stops its temporary Prefect server and every training child;
    # SIGTERM/SIGINT reach the runs, which checkpoint and end KILLED.
    launch.watch_descendants()
    try:
        if not args.reconcile and not args.serve:  # a served flow run checks its own paths
            _check_inputs(args.tokenized, args.prepared)
        if not args.reconcile:  # reconcile starts Prefect only when it has work to do
            start_temporary_server()  # so that its flow run ends Crashed, not Running, on Ctrl-C
        with launch.forward_signals():
            if args.reconcile:
                return reconcile(**params)
            if args.serve:
                step_jepa_sweep.serve(name=args.name, parameters=params)
                return 0
            return _exit_code(step_jepa_sweep(**params))
    except InputError as err:
        print(f"sweep: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    launch.process_main(main, preload=("mlflow",))  # the tracker's, imported when the sweep starts
