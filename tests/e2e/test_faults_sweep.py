"""A real sweep process (`python -m pipelines.sweep`) stopped from outside: kill -9, Ctrl-C,
SIGTERM. What it leaves must be final: the MLflow parent run, the Prefect flow run, and
no process of its own alive."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.support.processes import all_gone
from tests.support.projects import make_sweep_project

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "sweep-faults"


def _flow_runs(project: Path) -> list[tuple[str, str, str]]:
    """(name, state type, state name) of each flow run in the sweep's Prefect database, what
    its temporary server served. Read from the database itself: a client asking the API would
    start another temporary server on it (~8 CPU-s, two per `make test`)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(project / ".prefect" / "prefect.db")) as db:
        return db.execute("SELECT name, state_type, state_name FROM flow_run").fetchall()


@pytest.fixture
def project(tmp_path, tiny_model_dir, conversations, migrated_prefect, migrated_mlflow) -> Path:
    """A sweep of two configs (SFT, K=1) whose trainings last long enough to be stopped."""
    sweep = {"ks": [1], "lambdas": [0.5], "experiment": EXPERIMENT, "registered_model_name": "sj-faults"}
    root = make_sweep_project(tmp_path / "project", tiny_model_dir, conversations, sweep)
    migrated_prefect(root / ".prefect")  # the PREFECT_HOME of `_env`
    migrated_mlflow(root / "mlflow.db")  # the MLFLOW_TRACKING_URI of `_env`
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"] |= {"max_steps": 400, "epochs": 100, "checkpoint_every": 2, "eval_every": None}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # its own temporary server
    return env | {
        "PYTHONPATH": str(ROOT),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db",
        "PREFECT_HOME": str(project / ".prefect"),
    }


def _start(project: Path) -> subprocess.Popen:
    with (project / "sweep.log").open("w") as log:
        # Its own session: a terminal's process group, which Ctrl-C and kill -9 of the group reach.
        return subprocess.Popen(
            [sys.executable, "-m", "pipelines.sweep", "--params", "params.yaml"],
            cwd=project,
            env=_env(project),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(what: str, found, proc: subprocess.Popen, project: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (value := found()):
        assert proc.poll() is None, (
            f"the sweep exited ({proc.returncode}) before {what}:\n" + (project / "sweep.log").read_text()[-3000:]
        )
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.5)
    return value


def _client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{project}/mlflow.db")


def _runs(project: Path, filter_string: str) -> list:
    client = _client(project)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], filter_string) if experiment else []


def _descendants(proc: subprocess.Popen) -> list[int]:
    return [proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))]


def test_a_sweep_killed_with_sigkill_leaves_its_parent_run_to_the_next_sweep(project, monkeypatch):
    from stepjepa import tracking

    sweep = _start(project)
    # A config's MLflow run starts with its training (issue 32): one slot, so the first config's.
    parent = _wait_for(
        "parent run with the first config's run",
        lambda: [
            p
            for p in _runs(project, "tags.`stepjepa.kind` = 'sweep'")
            if _runs(project, f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
        ],
        sweep,
        project,
    )[0]
    doomed = _descendants(sweep)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert all_gone(doomed, timeout=60), "a process of the killed sweep survived it"
    client = _client(project)
    assert client.get_run(parent.info.run_id).info.status == "RUNNING"  # nothing could end it

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project}/mlflow.db")
    with tracking.sweep_run(EXPERIMENT, {"ks": [1]}) as second:
        pass

    ended = client.get_run(parent.info.run_id)
    assert ended.info.status == "KILLED"
    assert ended.data.tags["stepjepa.ended_by"] == f"next sweep: owner pid {sweep.pid} on {socket.gethostname()} gone"
    children = _runs(project, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [c.info.run_name for c in children] == ["sft_s0"] and children[0].info.status == "KILLED"
    assert not _runs(project, "tags.`stepjepa.kind` = 'sweep-config' and attributes.run_name = 'k1_lam0.5_s0'"), (
        "a config whose training never started has no MLflow run"
    )
    assert client.get_run(second).info.status == "FINISHED"


@pytest.mark.parametrize("signum, ctrl_c", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["sigint", "sigterm"])
def test_a_sweep_stopped_by_a_signal_leaves_final_flow_and_parent_runs(project, signum, ctrl_c):
    """Ctrl-C (SIGINT to the terminal's whole process group) or SIGTERM (preemption, to the
    sweep process only) during training."""
    sweep = _start(project)
    _wait_for(
        "training at step 2",
        lambda: any("INFO step 2/" in log.read_text() for log in project.glob("runs/sweep/*/train.log")),
        sweep,
        project,
    )
    doomed = _descendants(sweep)
    if ctrl_c:
        os.killpg(sweep.pid, signum)
    else:
        sweep.send_signal(signum)
    code = sweep.wait(timeout=240)
    log = (project / "sweep.log").read_text()
    assert code != 0, log[-3000:]
    assert all_gone(doomed, timeout=60), "a process of the stopped sweep survived it"
    trained = {log.parent.name: log.read_text() for log in project.glob("runs/sweep/*/train.log")}
    assert not any("step 400/400" in text for text in trained.values()), (
        "the run trained to its end instead of stopping at a checkpoint"
    )
    assert any("stopped by" in text for text in trained.values()), trained

    (parent,) = _runs(project, "tags.`stepjepa.kind` = 'sweep'")
    assert parent.info.status == "KILLED", log[-3000:]
    (flow_run,) = _flow_runs(project)
    assert flow_run[1] in {"CANCELLED", "CRASHED", "FAILED"}, f"{flow_run}\n{log[-3000:]}"
