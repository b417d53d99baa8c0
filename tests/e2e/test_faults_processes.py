"""Fault tolerance across processes: a launcher killed under its runs, signals forwarded,
a tracking-server outage, a fresh store opened by several runs, pytest itself killed."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.processes import all_gone
from tests.support.servers import free_port, mlflow_server, process

ROOT = Path(__file__).resolve().parents[2]

# A run that starts a grandchild (as `accelerate launch` starts the training process),
# writes both pids, and sleeps; on SIGTERM it notes the signal and exits 143.
CHILD = """
import signal, subprocess, sys, time
def stop(signum, frame):
    open(sys.argv[1] + ".signal", "w").write(str(signum))
    grandchild.terminate()
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
open(sys.argv[1], "w").write(f"{grandchild.pid} " + str(__import__("os").getpid()))
time.sleep(600)
"""


def _pids(path: Path, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.05)
    time.sleep(1.5)  # the watchdog notes descendants every second
    return [int(p) for p in path.read_text().split()]


def _launcher(tmp_path: Path, forward: bool) -> subprocess.Popen:
    """A process running `run_logged(CHILD)` as a sweep task does (inside `forward_signals`)."""
    code = (
        f"import sys; from pathlib import Path; from stepjepa.training import launch\n"
        f"cmd = [sys.executable, '-c', {CHILD!r}, {str(tmp_path / 'pids')!r}]\n"
        f"run = lambda: launch.run_logged(cmd, {{}}, Path({str(tmp_path / 'run.log')!r}))\n"
        + ("with launch.forward_signals():\n    run()\n" if forward else "run()\n")
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)})


# --- 5. a killed launcher leaves no run behind; its signals reach the run ------------------


@pytest.mark.e2e
def test_a_launcher_killed_with_sigkill_leaves_no_child_or_grandchild(tmp_path):
    launcher = _launcher(tmp_path, forward=False)
    pids = _pids(tmp_path / "pids")
    launcher.kill()
    launcher.wait()
    assert all_gone(pids), "the run or its child outlived the killed launcher"


@pytest.mark.e2e
def test_sigterm_to_the_launcher_is_forwarded_to_the_run(tmp_path):
    launcher = _launcher(tmp_path, forward=True)
    pids = _pids(tmp_path / "pids")
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=60)
    assert (tmp_path / "pids.signal").read_text() == str(int(signal.SIGTERM))
    assert all_gone(pids)


TRAIN_LAUNCHER = """
import sys
from pathlib import Path
from stepjepa.training import launch
params, data, out = map(Path, sys.argv[1:4])
cmd = launch.train_command(params, data, out, None, resume=False)
with launch.forward_signals(), launch.warm_starts(sys.argv[4] == "warm"):
    launch.run_logged(cmd, launch.device_env(None), out / "train.log", on_progress=print)
"""


@pytest.mark.e2e
@pytest.mark.parametrize("start", ["cold", "warm"])
def test_sigterm_to_a_sweep_task_checkpoints_its_accelerate_run(
    tiny_model_dir, conversations, tmp_path, start, migrated_mlflow
):
    """The sweep's path: `run_logged(accelerate launch -m stepjepa.training.train)`. SIGTERM kills
    accelerate's launcher at once; the training process under it must still checkpoint. Warm: the
    run forked from the warm server (stepjepa/training/warm.py) hears the same signal."""
    from mlflow import MlflowClient

    from stepjepa.training.checkpoint import latest_checkpoint
    from tests.support.train import write_params, write_tokenized

    data = write_tokenized(tiny_model_dir, conversations[:32], tmp_path / "train.parquet")
    params = write_params(
        tmp_path / "params.yaml",
        tiny_model_dir,
        batch_size=4,
        max_steps=500,
        epochs=100,
        log_every=1,
        tracking="mlflow",
        experiment="sweep-signal",
    )
    out = tmp_path / "run"
    env = os.environ | {"MLFLOW_TRACKING_URI": migrated_mlflow(tmp_path / "mlflow.db"), "PYTHONPATH": str(ROOT)}
    task = subprocess.Popen(
        [sys.executable, "-c", TRAIN_LAUNCHER, str(params), str(data), str(out), start],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 240
    for line in task.stdout:  # progress lines, forwarded by run_logged
        assert time.monotonic() < deadline, "no step 2 within 240 s"
        if line.startswith("step 2/"):
            break
    task.send_signal(signal.SIGTERM)
    rest, _ = task.communicate(timeout=120)
    assert task.returncode == 143, rest
    log_text = (out / "train.log").read_text()
    assert "stopped by SIGTERM after step" in log_text and "Traceback" not in log_text.split("SIGTERM received")[1]
    state = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(state["run_id"]).info.status == "KILLED"


@pytest.mark.cli
@pytest.mark.parametrize("code, stopped", [("143", True), ("-15", True), ("130", True), ("1", False), ("2", False)])
def test_a_run_ended_by_a_signal_is_told_apart_from_a_failure(tmp_path, code, stopped):
    from stepjepa.training.launch import RunFailed, run_logged

    script = "import os, signal, sys; c = int(sys.argv[1])\nos.kill(os.getpid(), -c) if c < 0 else sys.exit(c)"
    with pytest.raises(RunFailed) as raised:
        run_logged([sys.executable, "-c", script, code], dict(os.environ), tmp_path / "run.log")
    assert raised.value.code == int(code) and raised.value.stopped is stopped


# --- 8. server fixtures die with pytest, even when pytest is killed -----------------------


@pytest.mark.cli
@pytest.mark.skipif("STEPJEPA_FIXTURE_PIDS" not in os.environ, reason="run by the test below, inside a pytest it kills")
def test_holds_a_fixture_process_until_killed(tmp_path):
    with process(
        [sys.executable, "-c", CHILD, os.environ["STEPJEPA_FIXTURE_PIDS"]], tmp_path / "p.log", dict(os.environ)
    ):
        time.sleep(600)


@pytest.mark.e2e
def test_fixture_processes_die_when_pytest_is_killed(tmp_path):
    env = os.environ | {"STEPJEPA_FIXTURE_PIDS": str(tmp_path / "pids")}
    inner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_holds_a_fixture_process_until_killed",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pids = _pids(tmp_path / "pids", timeout=120)
    inner.kill()  # a CI time-out: no fixture clean-up runs
    inner.wait()
    assert all_gone(pids), "a fixture's processes outlived the killed pytest"


# --- 6. a fresh sqlite store opened by several runs at once -------------------------------

STARTER = """
import sys, time
from pathlib import Path
from stepjepa.tracking import MlflowTracker
go = Path(sys.argv[1])
while not go.exists():
    time.sleep(0.01)
tracker = MlflowTracker("concurrent", run_name=sys.argv[2])
tracker.log_metrics({"loss": 1.0}, step=1)
tracker.end()
"""


@pytest.mark.e2e
def test_three_runs_starting_on_a_fresh_store_all_succeed(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"  # a new store, not a migrated copy: its creation is the subject
    env = os.environ | {"MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(tmp_path / "go"), f"r{i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(3)
    ]
    time.sleep(15)  # all three have imported MLflow and wait for the same moment
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=180)[0] for p in starters]
    assert [p.returncode for p in starters] == [0, 0, 0], "\n".join(outputs)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("concurrent").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["r0", "r1", "r2"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["loss"] == 1.0 for r in runs)


# --- 3. a tracking-server outage neither blocks nor fails training ------------------------


@pytest.mark.e2e
@pytest.mark.server
def test_an_outage_is_ridden_out_and_the_backlog_is_sent_when_the_server_is_back(
    tmp_path, monkeypatch, caplog, migrated_mlflow
):
    from mlflow import MlflowClient

    from stepjepa.tracking import MlflowTracker

    backend, artifacts, port = migrated_mlflow(tmp_path / "mlflow.db"), tmp_path / "artifacts", free_port()
    env = dict(os.environ)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: the tracker retries by itself
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with mlflow_server(backend, artifacts, tmp_path / "m1.log", env, port=port) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracker = MlflowTracker("outage", run_name="r", flush_seconds=120)
        tracker.log_metrics({"loss": 1.0}, step=1)
        assert tracker.flush(30)
    with caplog.at_level(logging.INFO, logger="stepjepa.tracking"):
        started = time.monotonic()
        for step in range(2, 7):  # the server is down: logging must not wait for it
            tracker.log_metrics({"loss": float(step)}, step=step)
            time.sleep(1)
        assert time.monotonic() - started < 5 + 2, "log_metrics waited for the server"
        assert not tracker.flush(1)
        with mlflow_server(backend, artifacts, tmp_path / "m2.log", env, port=port):
            tracker.end()  # sends the backlog now that the server is back, then ends the run
            client = MlflowClient(url)
            run = client.get_run(tracker.run_id)
            assert run.info.status == "FINISHED"
            assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "loss")) == [1, 2, 3, 4, 5, 6]
    assert caplog.text.count("is unreachable") == 1 and "is back after" in caplog.text


@pytest.mark.e2e
@pytest.mark.server
def test_steps_never_sent_are_sent_later_by_the_resend_command(tmp_path, monkeypatch, caplog, migrated_mlflow):
    import json

    from mlflow import MlflowClient

    from stepjepa.tracking import MlflowTracker
    from stepjepa.training import resend

    backend, artifacts, port = migrated_mlflow(tmp_path / "mlflow.db"), tmp_path / "artifacts", free_port()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    out = tmp_path / "run"
    out.mkdir()
    with mlflow_server(backend, artifacts, tmp_path / "m1.log", dict(os.environ), port=port) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracker = MlflowTracker("resend", run_name="r", flush_seconds=2)
        tracker.log_metrics({"loss": 1.0}, step=1)
        assert tracker.flush(30)
    history = [{"step": s, "loss": float(s)} for s in (1, 2, 3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    for m in history[1:]:
        tracker.log_metrics({"loss": m["loss"]}, step=m["step"])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        tracker.end()
    assert time.monotonic() - started < 60, "end() waited on a server that is down"
    assert "2 logged steps were not sent" in caplog.text and "python -m stepjepa.training.resend OUT" in caplog.text
    (out / "summary.json").write_text(json.dumps({"run_id": tracker.run_id}))
    # A user runs resend in a new shell, without training's fail-fast HTTP settings; with
    # them, a just-restarted server's slow first answer (> 5 s on a loaded machine) failed it.
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT")
    with mlflow_server(backend, artifacts, tmp_path / "m2.log", dict(os.environ), port=port):
        assert resend.main([str(out)]) == 0
        client = MlflowClient(url)
        assert sorted(m.step for m in client.get_metric_history(tracker.run_id, "loss")) == [1, 2, 3]
        assert client.get_run(tracker.run_id).info.status == "FINISHED"


@pytest.mark.e2e
@pytest.mark.server
def test_checkpoints_keep_their_cadence_while_the_tracking_server_is_down(
    tiny_model_dir, conversations, tmp_path, migrated_mlflow
):
    """`stepjepa train` with the server killed after its first steps: every checkpoint is
    written on schedule, the model is saved, the outage is logged once, and `stepjepa.training.resend`
    sends what was missed once the server is back on the same store."""
    from mlflow import MlflowClient

    from stepjepa.training.checkpoint import list_checkpoints
    from tests.support.train import write_params, write_tokenized

    data = write_tokenized(tiny_model_dir, conversations[:32], tmp_path / "train.parquet")
    # ~4 steps/s here: training goes on for tens of seconds after the server is gone.
    steps, every = 120, 4
    params = write_params(
        tmp_path / "params.yaml",
        tiny_model_dir,
        batch_size=16,
        max_steps=steps,
        epochs=100,
        log_every=1,
        checkpoint_every=every,
        keep_checkpoints=steps,
        tracking="mlflow",
        log_model=True,
        experiment="outage-train",
    )
    backend, artifacts, port, out = (
        migrated_mlflow(tmp_path / "mlflow.db"),
        tmp_path / "artifacts",
        free_port(),
        tmp_path / "run",
    )
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    with mlflow_server(backend, artifacts, tmp_path / "m1.log", env, port=port) as url:
        env["MLFLOW_TRACKING_URI"] = url
        with (tmp_path / "train.log").open("w") as log:
            train = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stepjepa.training.train",
                    "--params",
                    str(params),
                    "--data",
                    str(data),
                    "--out",
                    str(out),
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client, deadline = MlflowClient(url), time.monotonic() + 240
        while not (
            (exp := client.get_experiment_by_name("outage-train"))
            and any(r.data.metrics for r in client.search_runs([exp.experiment_id]))
        ):
            assert train.poll() is None and time.monotonic() < deadline, (tmp_path / "train.log").read_text()
            time.sleep(0.2)
    assert train.wait(timeout=400) == 0, (tmp_path / "train.log").read_text()[-3000:]
    text = (tmp_path / "train.log").read_text()
    assert text.count("training goes on") == 1, "the outage should be logged once"
    # When the tracker found the server gone (the line's local-time stamp, as file times are).
    noticed = re.search(r"^(\S+ \S+) stepjepa.tracking WARNING MLflow at \S+ is unreachable", text, re.M)[1]
    down_at = datetime.strptime(noticed, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    written = {int(p.name.split("-")[1]): (p / "manifest.json").stat().st_mtime for p in list_checkpoints(out)}
    assert sorted(written) == list(range(every, steps + 1, every)), "a checkpoint is missing"
    down = sorted(t for t in written.values() if t > down_at)
    assert len(down) >= 3, f"too few checkpoints fell in the outage to judge it: {len(down)}"
    gaps = [b - a for a, b in zip([down_at, *down], down)]
    assert max(gaps) < 30, f"training stalled on the outage: seconds between checkpoints {gaps}"
    assert (out / "model" / "config.json").is_file() and (out / "summary.json").is_file()

    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in history] == list(range(1, steps + 1))
    run_id = json.loads((out / "summary.json").read_text())["run_id"]
    with mlflow_server(backend, artifacts, tmp_path / "m2.log", env, port=port):
        client = MlflowClient(url)
        assert client.get_run(run_id).info.status == "RUNNING"  # the end was never heard
        resend = subprocess.run(
            [sys.executable, "-m", "stepjepa.training.resend", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert resend.returncode == 0, resend.stderr
        for key in set(history[0]) - {"step"}:
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, steps + 1)), key
        assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.e2e
@pytest.mark.server
def test_a_server_gone_before_the_tracker_noticed_does_not_fail_logging_the_model(
    tiny_model_dir, tmp_path, monkeypatch, caplog, migrated_mlflow
):
    """A short run can end before the sender thread meets the outage: logging the model then
    meets it first, and must not turn a finished training into a failure."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from stepjepa.tracking import MlflowTracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with mlflow_server(
        migrated_mlflow(tmp_path / "mlflow.db"), tmp_path / "artifacts", tmp_path / "m.log", dict(os.environ)
    ) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        tracker = MlflowTracker("model-outage", run_name="r", flush_seconds=1)
        tracker.log_metrics({"loss": 1.0}, step=1)
        assert tracker.flush(30)
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    with caplog.at_level(logging.WARNING, logger="stepjepa.tracking"):
        assert tracker.log_model(model, tokenizer) is None
    assert "could not log the model" in caplog.text and "saved in the run folder" in caplog.text
    tracker.end()
