"""Fault tolerance of one training run: a shared run folder, retries with other settings,
corrupt checkpoints, a full disk, SIGTERM/SIGINT, and the logging window after a resume."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from stepjepa.config import config_from_dict
from stepjepa.model.modeling import save_model
from stepjepa.training.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint, write_file
from stepjepa.training.train import main, split_params, train
from tests.support.train import make_config, params_tree, write_params, write_tokenized

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_data(tiny_model_dir, conversations, tmp_path_factory) -> Path:
    return write_tokenized(tiny_model_dir, conversations[:32], tmp_path_factory.mktemp("data") / "train.parquet")


def _argv(params: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--params", str(params), "--data", str(data), "--out", str(out), *extra]


# --- 1. one process owns a run folder ----------------------------------------------------

HOLD = (
    "import sys, time; from stepjepa.runlock import hold\n"
    "with hold(sys.argv[1], 'x'):\n print('held', flush=True)\n time.sleep(600)"
)


@pytest.mark.cli
def test_a_second_launcher_of_the_same_run_folder_is_refused(tiny_model_dir, train_data, tmp_path, caplog):
    params, out = write_params(tmp_path / "params.yaml", tiny_model_dir, max_steps=1), tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.ERROR):
            assert main(_argv(params, train_data, out)) == 2
        assert f"run folder {out} is in use by another process (pid {holder.pid}" in caplog.text
        assert not (out / "metrics.jsonl").exists() and not (out / "model").exists()
    finally:
        holder.kill()  # kill -9: the lock dies with its holder
        holder.wait()
    assert main(_argv(params, train_data, out)) == 0


# --- 2. what does not change the weights is not an immutable MLflow param ---------------


def test_params_are_what_decides_the_weights_and_the_rest_are_tags():
    params, tags = split_params(
        {
            "train": {"k": 2, "log_every": 5, "experiment": "x"},
            "eval": {"limit": 3},
            "sweep": {"lambdas": [0.5]},
            "model": {"name_or_path": "m"},
        }
    )
    assert params == {"train.k": 2, "model.name_or_path": "m"}
    assert tags == {"eval.limit": 3, "sweep.lambdas": [0.5], "train.experiment": "x", "train.log_every": 5}


def test_a_retry_with_other_eval_and_sweep_settings_logs_into_the_same_run(
    tiny_model_dir, train_data, tmp_path, monkeypatch, migrated_mlflow
):
    """The sweep creates a config's run and passes MLFLOW_RUN_ID; a config that failed
    before its first checkpoint is retried into that run, maybe with a longer eval.limit."""
    from mlflow import MlflowClient

    from stepjepa.tracking import artifact_location

    uri = migrated_mlflow(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(uri)
    # Its artifacts beside the store, as the sweep's experiments keep them (not ./mlruns: the checkout).
    experiment = client.create_experiment("retry", artifact_location=artifact_location(uri))
    run_id = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    def config(limit: int, lambdas: list[float]):
        tree = params_tree(tiny_model_dir, max_steps=1, tracking="mlflow", experiment="retry")
        return config_from_dict(tree | {"eval": {"limit": limit}, "sweep": {"lambdas": lambdas}})

    train(config(3, [0.5]), train_data, tmp_path / "first")
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # MLflow drops it when a run ends; a retry is a new process
    train(config(4, [0.5, 2.0]), train_data, tmp_path / "retry")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.k"] == "2"
    assert "eval.limit" not in run.data.params and run.data.tags["eval.limit"] == "4"
    assert run.data.tags["sweep.lambdas"] == "[0.5, 2.0]"


# --- 4. verified checkpoints --------------------------------------------------------------


def _toy_checkpoints(out: Path, steps: tuple[int, ...]) -> None:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    for step in steps:
        save_checkpoint(out, step, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=5)


def _crash_at_step_5(cfg, data: Path, out: Path, monkeypatch) -> None:
    """Train into `out` until step 5 raises, as a kill would end it (checkpoints up to 4)."""
    import stepjepa.training.loop as loop

    real_step = loop.optimizer_step

    def crash(*args, **kwargs):
        if args[-1] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(loop, "optimizer_step", crash)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, data, out)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda d: (d / "optimizer.pt").write_bytes((d / "optimizer.pt").read_bytes()[:50]), "optimizer.pt: 50 bytes"),
        (lambda d: (d / "rng-0.pt").unlink(), "rng-0.pt"),
        (lambda d: (d / "state.json").write_text('{"step": 9}'), r"state.json: .*\(truncated\?\)"),
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    ],
)
def test_resume_picks_the_newest_valid_checkpoint_and_names_the_one_it_skips(tmp_path, caplog, damage, reason):
    _toy_checkpoints(tmp_path, (2, 4))
    damage(tmp_path / "checkpoints" / "step-000004")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "step-000002"
    assert "skipping checkpoint" in caplog.text and "step-000004" in caplog.text
    assert re.search(reason, caplog.text), caplog.text


def test_training_resumes_from_the_previous_checkpoint_when_the_latest_is_truncated(
    tiny_model_dir, train_data, tmp_path, monkeypatch, caplog
):
    cfg = make_config(tiny_model_dir, max_steps=6, checkpoint_every=2, batch_size=4)
    _crash_at_step_5(cfg, train_data, tmp_path / "run", monkeypatch)
    weights = tmp_path / "run/checkpoints/step-000004/trainable.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.INFO):
        assert train(cfg, train_data, tmp_path / "run", resume=True).steps == 6
    assert f"skipping checkpoint {weights.parent}: {weights}: 1000 bytes" in caplog.text
    assert "resuming from" in caplog.text and "step-000002 at step 2" in caplog.text


def test_a_failed_write_names_the_path_and_the_os_reason():
    with pytest.raises(CheckpointError, match=r"^/dev/full: could not write it: No space left on device$"):
        write_file(Path("/dev/full"), b"x" * 10_000)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount; skipped, and reported, elsewhere)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


@pytest.mark.cli  # its fixture mounts a tmpfs
def test_a_full_disk_leaves_no_partial_checkpoint_or_model(tiny_model_dir, small_disk):
    from stepjepa.model.modeling import build_model

    cfg = make_config(tiny_model_dir)
    model, tokenizer, _ = build_model(cfg.model, cfg.train)  # ~0.8 MiB of weights: more than is left
    (small_disk / "filler").write_bytes(b"x" * (1024 * 1024 - 256 * 1024))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    with pytest.raises(CheckpointError, match=rf"{small_disk}/checkpoints/.tmp-step-000003/.*No space left on device"):
        save_checkpoint(small_disk, 3, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=2)
    assert list((small_disk / "checkpoints").iterdir()) == []
    with pytest.raises(OSError, match="No space left on device") as raised:
        save_model(model, tokenizer, small_disk / "model")
    assert str(small_disk) in str(raised.value.filename)
    assert sorted(p.name for p in small_disk.iterdir()) == ["checkpoints", "filler"]


# --- 5. SIGTERM / SIGINT: checkpoint, MLflow KILLED, a documented exit code ---------------


@pytest.mark.e2e
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_marks_the_run_killed_and_exits_with_its_code(
    tiny_model_dir, train_data, tmp_path, signum, code, migrated_mlflow
):
    from mlflow import MlflowClient

    env = os.environ | {"MLFLOW_TRACKING_URI": migrated_mlflow(tmp_path / "mlflow.db")}
    params = write_params(
        tmp_path / "params.yaml",
        tiny_model_dir,
        batch_size=4,
        max_steps=500,
        epochs=100,
        log_every=1,
        checkpoint_every=None,
        tracking="mlflow",
        experiment="signal",
    )
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepjepa.training.train", *_argv(params, train_data, out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not ((out / "metrics.jsonl").is_file() and '"step": 2,' in (out / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signum)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, text
    assert "Traceback" not in text and f"stopped by {signal.Signals(signum).name} after step" in text, text
    state = json.loads((latest_checkpoint(out) / "state.json").read_text())
    assert 2 <= state["step"] < 500
    assert MlflowClient(env["MLFLOW_TRACKING_URI"]).get_run(state["run_id"]).info.status == "KILLED"


# --- 9. the first mean after a resume covers the whole logging window ---------------------


def test_after_a_resume_the_first_logged_mean_covers_log_every_steps(tiny_model_dir, train_data, tmp_path, monkeypatch):
    """log_every 3 and checkpoint_every 2: the step-4 checkpoint holds step 4's metrics,
    so step 6's mean after a crash at step 5 covers steps 4-6 as in an unbroken run."""
    cfg = make_config(tiny_model_dir, max_steps=6, checkpoint_every=2, log_every=3, batch_size=4)
    reference = train(cfg, train_data, tmp_path / "reference")
    _crash_at_step_5(cfg, train_data, tmp_path / "run", monkeypatch)
    resumed = train(cfg, train_data, tmp_path / "run", resume=True)
    timeless = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in resumed.history + reference.history]
    assert [m["step"] for m in timeless] == [3, 6, 3, 6]
    assert timeless[:2] == timeless[2:]
