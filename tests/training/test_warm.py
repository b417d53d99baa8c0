"""Warm starts (stepjepa/training/warm.py): a run forked from a server with the imports done
behaves as the same command started cold: output, exit status, folder, environment, and the
trained weights to the byte."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from stepjepa.training import launch
from stepjepa.training.warm import WarmStarter, local_module

PY = sys.executable


def test_only_one_local_stepjepa_process_is_taken():
    accel = ["--num_processes", "1", "--num_machines", "1", "--cpu"]
    assert local_module([PY, "-m", "stepjepa.cli", "score", "f"]) == ([], "stepjepa.cli", ["score", "f"])
    cmd = [PY, "-m", "accelerate.commands.launch", *accel, "-m", "stepjepa.training.train", "--out", "o"]
    assert local_module(cmd) == (accel, "stepjepa.training.train", ["--out", "o"])
    two = [PY, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    assert local_module([*two, "-m", "stepjepa.training.train"]) is None
    config = [PY, "-m", "accelerate.commands.launch", "--config_file", "fsdp.yaml", *accel]
    assert local_module([*config, "-m", "stepjepa.training.train"]) is None
    assert local_module([PY, "-c", "print(1)"]) is None
    assert local_module([PY, "-m", "pip", "list"]) is None
    assert local_module(["/other/python", "-m", "stepjepa.cli"]) is None


@pytest.mark.cli
def test_a_warm_command_is_the_cold_one_for_output_status_folder_and_environment(tmp_path):
    (tmp_path / "done.jsonl").write_text(
        json.dumps({"completion": "so #### 42", "answer": "42"}) + "\n" + json.dumps({"completion": "7", "answer": "8"})
    )
    commands = {
        "score": [PY, "-m", "stepjepa.cli", "score", "done.jsonl"],  # a path relative to cwd
        "unknown": [PY, "-m", "stepjepa.cli", "no-such-command"],  # exit 2, usage on stderr
        "missing": [PY, "-m", "stepjepa.cli", "score", "missing.jsonl"],
    }
    env = os.environ | {"COLUMNS": "61"}
    cold = {k: subprocess.run(c, cwd=tmp_path, env=env, capture_output=True, text=True) for k, c in commands.items()}
    with WarmStarter() as warm:
        assert warm.command(commands["score"])[:4] == [PY, "-m", "stepjepa.training.warm", "--socket"]
        hot = {
            k: subprocess.run(warm.command(c), cwd=tmp_path, env=env, capture_output=True, text=True)
            for k, c in commands.items()
        }
    for name in commands:
        assert hot[name].returncode == cold[name].returncode, (name, hot[name].stderr[-2000:])
        assert hot[name].stdout == cold[name].stdout, name
    assert cold["score"].returncode == 0 and cold["unknown"].returncode == 2 and cold["missing"].returncode != 0
    assert "unknown command" in hot["unknown"].stderr


@pytest.mark.cli
def test_without_a_server_the_client_starts_the_run_cold(tmp_path):
    cmd = [PY, "-c", "import sys; print('cold'); sys.exit(3)"]
    out = subprocess.run(
        [
            PY,
            "-c",
            "from stepjepa.training.warm import client; import sys; "
            f"raise SystemExit(client({str(tmp_path / 'none.sock')!r}, {cmd!r}, 0.2))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3 and out.stdout == "cold\n" and "starting the run cold" in out.stderr
    light = subprocess.run(
        [PY, "-c", "import sys, stepjepa.training.warm; print('torch' in sys.modules)"], capture_output=True, text=True
    )
    assert light.stdout == "False\n"  # the client is every run's command: it must not import torch


@pytest.mark.e2e
def test_a_warm_training_run_trains_the_same_weights_as_a_cold_one(tiny_model_dir, conversations, tmp_path):
    from tests.support.train import write_params, write_tokenized

    data = write_tokenized(tiny_model_dir, conversations[:32], tmp_path / "train.parquet")
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, k=2, max_steps=6, log_model=True)
    env = launch.DeviceSlots([], cpu_slots=2).env(None)  # a lane's share of the cores, as in a sweep
    logs = {}
    for mode in ("cold", "warm"):
        out = tmp_path / mode
        with launch.warm_starts(mode == "warm"):
            launch.run_logged(launch.train_command(params, data, out, None, resume=False), env, out / "train.log")
        logs[mode] = (out / "train.log").read_text()
    assert (tmp_path / "warm" / "model" / "model.safetensors").read_bytes() == (
        tmp_path / "cold" / "model" / "model.safetensors"
    ).read_bytes()
    steps = {mode: re.findall(r"INFO (step \d+/\d+)", text) for mode, text in logs.items()}
    assert steps["warm"] == steps["cold"] and steps["warm"] and "Traceback" not in logs["warm"]
    assert logs["warm"].splitlines()[0] == logs["cold"].splitlines()[0].replace("/cold", "/warm")  # the command as run
