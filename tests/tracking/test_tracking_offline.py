"""A tracking store that cannot be reached when a run starts (`stepjepa/tracking/offline.py`):
training goes on, the run folder records it, and `stepjepa resend OUT` creates the MLflow run
when the store is back (issue 33)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import free_port, mlflow_server

ROOT = Path(__file__).resolve().parents[2]


def _down(monkeypatch) -> str:
    """A tracking URI nothing listens on, refused at once."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_an_unreachable_store_at_the_start_is_one_warning_and_an_offline_record(tmp_path, monkeypatch, caplog):
    from stepjepa.tracking import make_tracker
    from stepjepa.tracking.offline import RECORD, OfflineTracker, pending, read_record

    uri = _down(monkeypatch)
    out = tmp_path / "run"
    with caplog.at_level("WARNING", logger="stepjepa.tracking"):
        tracker = make_tracker("mlflow", "exp", "r", None, is_main=True, out=out)
    assert isinstance(tracker, OfflineTracker) and tracker.new_run and tracker.run_id is None
    [line] = [r.getMessage() for r in caplog.records]
    assert uri in line and "Connection refused" in line and str(out / RECORD) in line and "\n" not in line
    tracker.log_params({"train.k": 2})
    for step in (1, 2):
        tracker.log_metrics({"loss": 1.0 / step, "tokens_per_s": 9.0}, step)
    tracker.end()
    assert pending(out) and [next(iter(e)) for e in read_record(out)] == ["start", "params", "step", "step", "end"]
    # Still down: resend says so in one line and keeps the record.
    from stepjepa.training import resend

    assert resend.main([str(out)]) == 1 and pending(out)


def test_a_store_that_is_down_is_one_line_wherever_a_user_meets_it(monkeypatch):
    """`stepjepa evaluate --mlflow-run-id` asks for the run first; MLflow's own message for a
    refused connection is a page of wrapped reprs."""
    from stepjepa.tracking import one_line
    from stepjepa.tracking.evaluation import run_problem

    uri = _down(monkeypatch)
    problem = run_problem(uri, "0" * 32)
    assert "\n" not in problem and "[Errno 111] Connection refused" in problem and len(problem) <= 200
    assert one_line(ValueError("first\nsecond")) == "first" and one_line(OSError()) == "OSError"


def test_a_replayed_record_creates_the_run_once_with_its_start_time_and_every_step(
    tmp_path, monkeypatch, migrated_mlflow
):
    from mlflow import MlflowClient

    from stepjepa.tracking import make_tracker, offline_run_id, send_pending
    from stepjepa.tracking.offline import pending, read_record

    _down(monkeypatch)
    out = tmp_path / "run"
    tracker = make_tracker("mlflow", "exp", "r", None, is_main=True, out=out)
    tracker.log_params({"train.k": 2})
    tracker.set_tags({"git.commit": "abc"})
    (out / "train.parquet").write_bytes(b"rows")
    tracker.log_datasets({"training": out / "train.parquet"})
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": float(step)}, step)
    tracker.end("KILLED")
    started = read_record(out)[0]["start"]["time"]
    # The resumed attempt (server still down) replays steps 3-4 after its checkpoint at step 2.
    again = make_tracker("mlflow", "exp", "r", None, is_main=True, out=out)
    assert not again.new_run, "a resumed run's params are in the record already"
    for step in (3, 4):
        again.log_metrics({"loss": 10.0 + step}, step)
    again.end()

    store = migrated_mlflow(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run_id = send_pending(out)
    assert run_id and send_pending(out) is None and offline_run_id(out) == run_id and not pending(out)
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.start_time == started and run.info.status == "FINISHED" and run.info.run_name == "r"
    assert run.data.params == {"train.k": "2"} and run.data.tags["git.commit"] == "abc"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["run/train.parquet"]
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == {1: 1.0, 2: 2.0, 3: 3.0, 4: 14.0}, "each step once, as first logged"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # The next attempt, with the store back, continues that run.
    online = make_tracker("mlflow", "exp", "r", None, is_main=True, out=out)
    assert online.run_id == run_id and not online.new_run
    online.end()


@pytest.mark.e2e
@pytest.mark.server
@pytest.mark.cli
def test_training_with_the_server_down_from_the_start_is_sent_by_resend(
    tiny_model_dir, conversations, tmp_path, migrated_mlflow
):
    """Issue 33.1: `stepjepa train` with MLFLOW_TRACKING_URI naming a stopped server ended in a
    traceback and trained nothing. It trains, warns once, and `stepjepa resend OUT` creates
    the MLflow run, filled in, when a server is up at that address."""
    from mlflow import MlflowClient

    from tests.support.train import write_params, write_tokenized

    data = write_tokenized(tiny_model_dir, conversations[:8], tmp_path / "train.parquet")
    params = write_params(
        tmp_path / "params.yaml",
        tiny_model_dir,
        batch_size=4,
        max_steps=4,
        epochs=10,
        log_every=1,
        checkpoint_every=2,
        tracking="mlflow",
        log_model=True,
        experiment="offline",
    )
    port, out = free_port(), tmp_path / "run"
    env = os.environ | {"PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    train = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepjepa.cli",
            "train",
            "--params",
            str(params),
            "--data",
            str(data),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=env | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    warnings = [line for line in train.stderr.splitlines() if "is unreachable" in line]
    assert len(warnings) == 1 and f"http://127.0.0.1:{port}" in warnings[0], train.stderr[-3000:]
    assert "Traceback" not in train.stderr
    assert (out / "model" / "config.json").is_file() and json.loads((out / "summary.json").read_text())[
        "run_id"
    ] is None
    started = json.loads((out / "mlflow-offline.jsonl").read_text().splitlines()[0])["start"]["time"]

    with mlflow_server(
        migrated_mlflow(tmp_path / "mlflow.db"), tmp_path / "artifacts", tmp_path / "m.log", env, port=port
    ) as url:
        resend = subprocess.run(
            [sys.executable, "-m", "stepjepa.cli", "resend", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert resend.returncode == 0, resend.stderr[-3000:]
        client = MlflowClient(url)
        [run] = client.search_runs([client.get_experiment_by_name("offline").experiment_id])
        assert run.info.status == "FINISHED" and run.info.start_time == started
        assert run.data.params["train.k"] and run.data.params["run.total_steps"] == "4"
        assert run.data.tags["model_uri"].startswith("models:/") and run.data.tags["out"] == str(out.resolve())
        assert [(d.dataset.name.split("/")[-1], d.tags[0].value) for d in run.inputs.dataset_inputs] == [
            ("train.parquet", "training")
        ]
        for key in ("loss", "lm_loss", "tokens_per_s"):
            assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [1, 2, 3, 4], key
        assert "config.yaml" in {f.path for f in client.list_artifacts(run.info.run_id)}


# --- a sweep whose MLflow server is down at its start, or goes away before its end -------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, conversations):
    """A one-config sweep (the SFT baseline): K = 0 and lambda = 0 is the baseline itself."""
    from tests.support.projects import make_sweep_project

    sweep = {"ks": [0], "lambdas": [0.0], "experiment": "sweep-offline", "registered_model_name": "sj-offline"}
    return make_sweep_project(tmp_path_factory.mktemp("sweep-offline"), tiny_model_dir, conversations, sweep)


def _sweep_paths(name: str) -> dict[str, str]:
    from tests.support.projects import PATHS

    return PATHS | {"runs_dir": f"runs/{name}", "report_dir": f"metrics/{name}"}


def _exit_code_and_message(summary: dict, exit_code) -> tuple[int, str]:
    """The sweep's exit code and the start of its one line on stderr. (Not capsys: the Prefect
    harness's log handlers outlive the test and would write to its closed stream.)"""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = exit_code(summary)
    [line] = err.getvalue().splitlines()
    return code, ": ".join(line.split(": ")[:2])


def _check_logged(url: str, paths: dict[str, str], started: int | None = None) -> None:
    """Everything the sweep computed is in the store at `url`: the child run filled in, the
    champion registered, a FINISHED parent with the summary; nothing is left to log."""
    from mlflow import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name("sweep-offline").experiment_id
    [child] = client.search_runs([experiment], "tags.`stepjepa.kind` = 'sweep-config'")
    assert child.info.run_name == "sft_s0" and child.info.status == "FINISHED"
    assert started is None or child.info.start_time == started, "the run keeps its real start time"
    assert child.data.params["train.k"] == "0" and child.data.tags["model_uri"].startswith("models:/")
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "lm_loss")) == [1, 2, 3, 4]
    assert {"validation/accuracy_strict", "test/accuracy_strict"} <= set(child.data.metrics)
    assert client.get_model_version_by_alias("sj-offline", "champion").run_id == child.info.run_id
    parents = client.search_runs([experiment], "tags.`stepjepa.kind` = 'sweep' and attributes.status = 'FINISHED'")
    assert any("summary.json" in {f.path for f in client.list_artifacts(p.info.run_id)} for p in parents)
    assert not (Path(paths["report_dir"]) / "unlogged.json").exists()


@pytest.mark.e2e
@pytest.mark.server
def test_a_sweep_started_with_the_server_down_trains_reports_and_is_logged_by_reconcile(
    environment, monkeypatch, migrated_mlflow
):
    """Issue 33.1, the sweep: the parent run's creation failed with a traceback and nothing ran.
    The sweep trains and evaluates, writes its report, names what MLflow lacks and exits 1;
    `--reconcile` with the server up logs it all, and exits 0."""
    from pipelines.sweep import _exit_code, reconcile, step_jepa_sweep

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    paths, port = _sweep_paths("down-at-start"), free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    summary = step_jepa_sweep(**paths)
    assert summary["champion"]["run_folder"] and summary["failed"] == []
    assert _exit_code_and_message(summary, _exit_code) == (
        1,
        f"sweep: not yet logged to MLflow at http://127.0.0.1:{port}",
    ), "MLflow lacks it: not done for DVC"
    assert json.loads((environment / paths["report_dir"] / "unlogged.json").read_text())["unlogged"]
    [record] = environment.glob(f"{paths['runs_dir']}/*/mlflow-offline.jsonl")
    started = json.loads(record.read_text().splitlines()[0])["start"]["time"]

    with mlflow_server(
        migrated_mlflow(environment / "down-at-start.db"),
        environment / "artifacts-a",
        environment / "mlflow-a.log",
        dict(os.environ),
        port=port,
    ) as url:
        assert reconcile(**paths) == 0
        _check_logged(url, paths, started)


@pytest.mark.e2e
@pytest.mark.server
def test_a_sweep_whose_server_goes_away_before_its_end_is_completed_by_reconcile(
    environment, monkeypatch, migrated_mlflow
):
    """The server stops after validation: the test split's results, the champion's
    registration and the summary are named, kept, and logged by `--reconcile` once it is back."""
    from contextlib import ExitStack

    from pipelines.sweep import _exit_code, reconcile, step_jepa_sweep
    from stepjepa.sweep import report

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    paths, port, server = _sweep_paths("down-at-end"), free_port(), ExitStack()
    backend = migrated_mlflow(environment / "down-at-end.db")
    url = server.enter_context(
        mlflow_server(backend, environment / "artifacts-b", environment / "mlflow-b1.log", dict(os.environ), port=port)
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    summarize = report.summarize

    def stop_then_summarize(*args, **kwargs):  # after validation, before test, registration and summary
        server.close()
        return summarize(*args, **kwargs)

    monkeypatch.setattr(report, "summarize", stop_then_summarize)
    summary = step_jepa_sweep(**paths)
    monkeypatch.setattr(report, "summarize", summarize)
    assert _exit_code_and_message(summary, _exit_code) == (1, f"sweep: not yet logged to MLflow at {url}")
    assert summary["champion"]["run_folder"]
    assert {"the test results of sft_s0", "the champion's registration", "the sweep's summary"} <= set(
        summary["unlogged"]
    )
    assert (environment / paths["report_dir"] / "summary.json").is_file()

    with mlflow_server(
        backend, environment / "artifacts-b", environment / "mlflow-b2.log", dict(os.environ), port=port
    ):
        assert reconcile(**paths) == 0
        _check_logged(url, paths)
