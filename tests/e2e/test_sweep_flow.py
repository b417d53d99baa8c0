"""The Prefect sweep end to end: real Prefect (test harness), real MLflow (sqlite), the
tiny model trained by real `accelerate launch` processes. One config is made to fail
(lambda = 1e39 overflows the loss to inf) to prove that the others still finish."""

import contextlib
import contextvars
import json
import os
import re
import threading
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from tests.support.projects import PATHS, make_sweep_project

pytestmark = pytest.mark.e2e


# What dvc.yaml's sweep stage passes, in the project make_sweep_project lays out.
@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, conversations):
    sweep = {"ks": [1], "lambdas": [0.5, 1e39], "experiment": "sweep-test", "registered_model_name": "sj-test"}
    return make_sweep_project(tmp_path_factory.mktemp("sweep"), tiny_model_dir, conversations, sweep)


def children(client, parent_id):
    exp = client.get_experiment_by_name("sweep-test")
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


@contextlib.contextmanager
def task_run_names():
    """Every name a task run of the Prefect server had while the block ran (polled): what the
    UI showed, queued (Pending) runs included."""
    from prefect.client.orchestration import get_client

    seen, stop = set(), threading.Event()

    def poll():
        with get_client(sync_client=True) as client:
            while not stop.is_set():
                seen.update(t.name for t in client.read_task_runs())
                stop.wait(0.2)

    # The harness's API URL is a context setting: the thread runs in a copy of this context.
    thread = threading.Thread(target=contextvars.copy_context().run, args=(poll,), daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def test_sweep_selects_on_validation_tests_once_registers_and_survives_a_failure(environment):
    from pipelines.sweep import _exit_code, step_jepa_sweep

    with task_run_names() as names:
        summary = step_jepa_sweep(**PATHS)
    # Readable in the UI from the start, queued ones too (issue 32: `train_run-557`).
    assert names and all(re.match(r"(start|train|evaluate) (sft|k1)_", name) for name in names), names
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert summary["configs"] == 3 and summary["failed_runs"] == 1 and summary["failed"] == ["k1_lam1e+39_s0"]
    accuracy = json.loads((environment / "metrics/sweep/accuracy.json").read_text())
    assert {r["config"] for r in accuracy} == {"sft", "k1_lam0.5"}
    assert _exit_code(summary) == 1, "a sweep with a failed config must not look done to DVC"
    parent = client.search_runs(
        [client.get_experiment_by_name("sweep-test").experiment_id], "tags.`stepjepa.kind` = 'sweep'"
    )[0]
    assert parent.info.status == "FINISHED"  # a failed config does not fail the sweep
    assert parent.info.run_name == "sweep K=1 lambda=0.5,1e+39 seeds=0 steps inline/cosine (params.yaml)"
    runs = {r.info.run_name: r for r in children(client, parent.info.run_id)}
    assert set(runs) == {"sft_s0", "k1_lam0.5_s0", "k1_lam1e+39_s0"}
    assert runs["k1_lam1e+39_s0"].info.status == "FAILED"
    for name in ["sft_s0", "k1_lam0.5_s0"]:
        assert runs[name].info.status == "FINISHED"
        assert {
            "validation/accuracy_strict",
            "validation/nll",
            "validation/step2_nll",
            "lm_loss",
            "val_nll",
            "val_step2_nll",
        } <= set(runs[name].data.metrics)
        assert runs[name].data.params["train.k"] == ("0" if name == "sft_s0" else "1")
        # MLflow's own lineage: Source and Dataset columns, the config and the sweep's log.
        assert runs[name].data.tags["mlflow.source.name"] == "stepjepa/training/train.py"
        assert {d.dataset.name for d in runs[name].inputs.dataset_inputs} == {
            "tokenized/train.parquet",
            "tokenized/validation.parquet",
        }
        artifacts = {f.path for f in client.list_artifacts(runs[name].info.run_id)}
        assert {"config.yaml", "train.log"} <= artifacts
        assert "validation/predictions_table.json" in {
            f.path for f in client.list_artifacts(runs[name].info.run_id, "validation")
        }
    assert client.get_experiment_by_name("sweep-test").tags["mlflow.experimentKind"] == "custom_model_development"
    assert {"validation/mean_cos", "validation/rank_view1"} <= set(runs["k1_lam0.5_s0"].data.metrics)
    # Test once: the selected config and SFT, no other run, no other evaluation.
    selected = summary["selected"]
    tested = {name for name, run in runs.items() if any(k.startswith("test/") for k in run.data.metrics)}
    assert tested == {f"{selected}_s0", "sft_s0"}
    assert {
        p.parent.parent.parent.name.split("-")[0]
        for p in environment.glob("runs/sweep/*/eval/test-*/predictions.jsonl")
    } == {f"{selected}_s0", "sft_s0"}
    assert "sft_accuracy_strict" in summary["test"] and "champion_accuracy_strict" in summary["test"]
    assert summary["champion"] == {  # no alias: the registry's outcome says where it went
        "name": "sj-test",
        "config": selected,
        "run_folder": summary["champion"]["run_folder"],
    }
    version = client.get_model_version_by_alias("sj-test", "champion")
    assert version.tags["config"] == selected and version.tags["selected_on"] == "validation"
    assert version.tags["run_folder"] == summary["champion"]["run_folder"] and "beats_sft" in version.tags
    assert summary["registry"] == version.tags["registry_outcome"] == f"first champion: version 1 ({selected})"
    assert parent.data.tags["stepjepa.selected"] == selected
    pipe = mlflow.transformers.load_model("models:/sj-test@champion")
    assert isinstance(pipe("Betty has 5 apples.", max_new_tokens=4)[0]["generated_text"], str)
    assert (environment / "metrics/sweep/heatmap.png").stat().st_size > 1000
    # Every config's seed-level verdict for `stepjepa compare`, and its figure; one seed: no interval.
    verdicts = json.loads((environment / "metrics/sweep/verdicts.json").read_text())
    assert [(v["config"], v["verdict"]) for v in verdicts] == [
        ("k1_lam0.5", "too few seeds to tell"),
        ("k1_lam1e+39", "failed"),
    ]
    assert verdicts[0]["paired_seeds"] == 1 and "ci_low" not in verdicts[0]
    assert (environment / "metrics/sweep/effects.png").stat().st_size > 1000
    table = (environment / "metrics/sweep/table.md").read_text()
    assert "val Step-2 NLL" in table and f"**Test (read once): {selected} vs SFT**" in table


def test_queued_runs_wait_in_prefect_instead_of_running(environment):
    """One device slot (CPU): a training that waits for it is Pending in Prefect, not Running,
    so the timeline shows one run at a time and durations hold no queue time (issue 18)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["step-jepa-sweep"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    trains = sorted((t for t in task_runs if t.name.startswith("train ")), key=lambda t: t.start_time)
    assert len(trains) == 3 and all(t.start_time and t.end_time for t in trains)
    for earlier, later in zip(trains, trains[1:]):
        assert later.start_time >= earlier.end_time, f"{later.name} was Running while {earlier.name} was"
    # Issue 32: a config's MLflow run starts when its training does, not when the sweep does.
    mlflow_client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = mlflow_client.get_experiment_by_name("sweep-test")
    configs = mlflow_client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep-config'")
    started = {r.info.run_name: r.info.start_time for r in configs}
    for earlier, later in zip(trains, trains[1:]):
        name = later.name.removeprefix("train ")
        assert started[name] >= earlier.end_time.timestamp() * 1000 - 1000, f"{name}'s MLflow run started queued"


def test_tracked_reports_hold_nothing_machine_specific(environment):
    text = "".join(p.read_text() for p in (environment / "metrics/sweep").glob("*.json"))
    text += (environment / "metrics/sweep/table.md").read_text()
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_ids = {r.info.run_id for e in client.search_experiments() for r in client.search_runs([e.experiment_id])}
    assert run_ids and not any(run_id in text for run_id in run_ids)
    assert (
        str(environment) not in text
        and "version" not in json.loads((environment / "metrics/sweep/summary.json").read_text())["champion"]
    )


def test_rerun_skips_finished_configs(environment):
    from pipelines.sweep import step_jepa_sweep

    (log,) = environment.glob("runs/sweep/k1_lam0.5_s0-*/train.log")
    # Validation is evaluated by the training process, with the model it just saved: no
    # second process; only the test split (read once) gets an evaluation process.
    assert log.read_text().count("evaluating ") == 1 and " evaluate validation " in log.read_text()
    assert not list(environment.glob("runs/sweep/*/eval/validation*/evaluate.log"))
    (eval_log,) = environment.glob("runs/sweep/sft_s0-*/eval/test-*/evaluate.log")
    launches, evals = log.read_text().count("$ "), eval_log.read_text().count("$ ")
    before = (environment / "metrics/sweep/summary.json").read_text()
    summary = step_jepa_sweep(**PATHS)
    assert log.read_text().count("$ ") == launches, "a finished config was trained again"
    assert eval_log.read_text().count("$ ") == evals, "a finished evaluation was run again"
    assert summary["champion"] is not None
    assert (environment / "metrics/sweep/summary.json").read_text() == before, "same results, same report"
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("sweep-test")
    configs = client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep-config'")
    assert len(configs) == 3, "child runs are reused, not duplicated"
    parents = client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep'", order_by=["start_time ASC"])
    # Issue 32: the same sweep again reuses its parent (no parent left without its runs).
    (parent,) = parents
    assert parent.data.tags["stepjepa.reruns"] == "1" and parent.info.status == "FINISHED"
    for run in configs:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["stepjepa.sweeps"] == parent.info.run_id
    versions = client.search_model_versions("name = 'sj-test'")
    assert len(versions) == 1 and summary["champion_version"] == "1", "the same champion is not registered twice"
    assert summary["registry"].startswith("champion unchanged: the sweep's best is the champion itself, version 1")
    assert parent.data.tags["stepjepa.registry"] == summary["registry"]


def test_a_new_tracking_store_is_filled_from_the_run_folders_without_training(environment, migrated_mlflow):
    """What `make run` does after `dvc pull`, or with another tracking server: reconcile."""
    from pipelines.sweep import reconcile

    (log,) = environment.glob("runs/sweep/k1_lam0.5_s0-*/train.log")
    launches = log.read_text().count("$ ")
    # New is empty here, what reconcile fills: a copy of the migrated template is one. MLflow's
    # creation of a store that does not exist stays covered by the fresh clones' `make run`.
    os.environ["MLFLOW_TRACKING_URI"] = migrated_mlflow(environment / "other-store.db")
    try:
        assert reconcile(**PATHS) == 1  # the failed config is retried, and fails again
        assert log.read_text().count("$ ") == launches, "reconciling trained a finished config again"
        client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
        version = client.get_model_version_by_alias("sj-test", "champion")
        run = client.get_run(version.run_id)
        assert "lm_loss" in run.data.metrics and "validation/accuracy_strict" in run.data.metrics
        assert run.data.tags["stepjepa.backfilled_from"] == version.tags["run_folder"]
        # A run filled in from its folder has MLflow's Source and Datasets too, and its config and log.
        assert run.data.tags["mlflow.source.name"] == "stepjepa/training/train.py"
        assert {
            (d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
            for d in run.inputs.dataset_inputs
        } == {("tokenized/train.parquet", "training"), ("tokenized/validation.parquet", "validation")}
        assert {"config.yaml", "train.log"} <= {f.path for f in client.list_artifacts(run.info.run_id)}
        assert mlflow.transformers.load_model("models:/sj-test@champion") is not None
        assert reconcile(**PATHS) == 0, "a registered champion is a no-op"
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{environment}/mlflow.db"


def flow_run_log(environment) -> list[str]:
    """The log lines of the newest step-jepa-sweep flow run, as the Prefect UI shows them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        (flow_run,) = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["step-jepa-sweep"])),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
    return [log.message for log in logs]


def test_bad_parameters_are_rejected_before_training(environment):
    from prefect.exceptions import ParameterTypeError

    from pipelines.sweep import step_jepa_sweep
    from stepjepa.config import ConfigError
    from stepjepa.inputs import InputError

    for bad in [{"ks": []}, {"ks": [-1]}, {"lambdas": [float("nan")]}]:
        with pytest.raises(ConfigError, match="params.yaml with flow parameters " + next(iter(bad))):
            step_jepa_sweep(sweep=bad, **PATHS)
    # The flow run's log (the Prefect UI's) says it in one line, without a traceback (issue 32).
    lines = flow_run_log(environment)
    assert not any("Traceback" in line for line in lines), lines
    assert sum("params.yaml with flow parameters lambdas" in line for line in lines) == 1, lines
    # Paths a served flow run was given whose data stages' outputs are not there: the same.
    with pytest.raises(InputError, match="data/none/train.parquet, .*nothing was trained"):
        step_jepa_sweep(**PATHS | {"tokenized": "data/none"})
    lines = flow_run_log(environment)
    assert not any("Traceback" in line for line in lines), lines
    assert sum("data/none/validation.parquet" in line for line in lines) == 1, lines
    for bad in [{"lambdas": ["abc"]}, {"layout": "sideways"}, {"kss": [1]}]:  # not the field's type, or no field
        with pytest.raises(ParameterTypeError):
            step_jepa_sweep(sweep=bad, **PATHS)
    assert not list(environment.glob("runs/sweep/*_s1-*"))


def test_prefect_waits_longer_for_its_temporary_server():
    """Prefect reads settings at import: the sweep's longer start-up wait must be set before it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"}
    code = (
        "import pipelines.sweep; from prefect.settings import get_current_settings; "
        "print(get_current_settings().server.ephemeral.startup_timeout_seconds)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "120"


def evaluations(project) -> dict[str, int]:
    """Evaluation processes started so far, per evaluation folder (`$ ` opens each command in
    its log), and the validation evaluations training processes ran in-process."""
    counts = {
        str(p.parent.relative_to(project)): p.read_text().count("$ ")
        for p in project.glob("runs/*/*/eval/*/evaluate.log")
    }
    counts["in training"] = sum(p.read_text().count("evaluating ") for p in project.glob("runs/*/*/train.log"))
    return counts


def test_each_evaluation_setting_is_evaluated_once_side_by_side(environment):
    """Issue 32: eval.limit 6 -> 3 -> 6 -> 3 evaluates each setting once, in folders side by side."""
    from pipelines.sweep import step_jepa_sweep

    params = environment / "params.yaml"
    original = params.read_text()
    only = {"lambdas": [0.5]}  # the configs that train (the overflowing one would retrain each time)
    try:
        step_jepa_sweep(sweep=only, **PATHS)  # limit 6: evaluated by the sweeps above
        before = evaluations(environment)
        tree = yaml.safe_load(original)
        tree["eval"]["limit"] = 3
        tree["train"]["k"] = 3  # as `dvc exp run -S train.k=3` would: the sweep sets K itself
        params.write_text(yaml.safe_dump(tree))
        step_jepa_sweep(sweep=only, **PATHS)
        after_first_switch = evaluations(environment)
        warned = [line for line in flow_run_log(environment) if line.startswith("train.k")]
        assert len(warned) == 1 and "set sweep.ks instead" in warned[0], warned
        new = {k: v for k, v in after_first_switch.items() if before.get(k) != v}
        # validation of sft and k1_lam0.5, test of the selected config and of sft (one if it is sft)
        assert len(new) in (3, 4) and all(v == 1 for v in new.values()), new
        assert all("-" in Path(k).name for k in new), "a new setting gets a folder of its own"
        params.write_text(original)
        step_jepa_sweep(sweep=only, **PATHS)
        tree["eval"]["limit"] = 3
        params.write_text(yaml.safe_dump(tree))
        summary = step_jepa_sweep(sweep=only, **PATHS)
        assert evaluations(environment) == after_first_switch, "a setting evaluated before was evaluated again"
        assert summary["test"] and summary["validation"]
        for run in environment.glob("runs/sweep/sft_s0-*"):
            assert len(list(run.glob("eval/validation*/eval_key"))) == 2, "both settings side by side"
    finally:
        params.write_text(original)
