"""Warm starts (stepjepa/training/warm.py): a run forked from a server with the imports done
behaves as the same command started cold: output, exit status, folder, environment, and the
trained weights to the byte. A process starts its server with its first warm run and keeps it
for its next sweeps while it fits."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stepjepa.training import launch, warm
from stepjepa.training.warm import WarmStarter, local_module
from tests.support.processes import all_gone
from tests.support.projects import ROOT

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
    starter = WarmStarter()
    assert starter.command(commands["score"])[:4] == [PY, "-m", "stepjepa.training.warm", "--socket"]
    hot = {
        k: subprocess.run(starter.command(c), cwd=tmp_path, env=env, capture_output=True, text=True)
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
            "from stepjepa.training.warm import client; import os, sys; "
            f"raise SystemExit(client({str(tmp_path / 'none.sock')!r}, os.getppid(), {cmd!r}, 0.2))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 3 and out.stdout == "cold\n" and "starting the run cold" in out.stderr
    # Its sweep killed (-9) as the run starts, the server not up yet: the client gives up, however
    # soon the sweep died, instead of starting the run cold after it.
    sweep = (
        "import os, subprocess, sys; print(subprocess.Popen([sys.executable, '-m', 'stepjepa.training.warm', "
        f"'--socket', {str(tmp_path / 'none.sock')!r}, str(os.getpid()), '--', *{cmd!r}], "
        "stdout=subprocess.DEVNULL).pid)"
    )
    orphan = int(subprocess.run([PY, "-c", sweep], capture_output=True, text=True).stdout)
    assert all_gone([orphan], timeout=10), "a client outlived its sweep, waiting for a server"
    light = subprocess.run(
        [PY, "-c", "import sys, stepjepa.training.warm; print('torch' in sys.modules)"], capture_output=True, text=True
    )
    assert light.stdout == "False\n"  # the client is every run's command: it must not import torch


@pytest.mark.cli
def test_a_run_whose_server_dies_before_starting_it_starts_cold_at_once(tmp_path):
    """A server killed as a sweep begins still counts as running for a moment (its threads exit)
    and may still hold its socket: its run starts cold instead of failing or waiting for it."""
    cmd = [PY, "-c", "import sys; print('cold'); sys.exit(3)"]

    def run_client(path: Path) -> subprocess.CompletedProcess:
        code = "from stepjepa.training.warm import client; import os; raise SystemExit(client(%r, os.getppid(), %r))"
        return subprocess.run([PY, "-c", code % (str(path), cmd)], capture_output=True, text=True, timeout=60)

    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # its path left behind, nobody listening
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    started = time.monotonic()
    out = run_client(tmp_path / "dead.sock")
    assert out.returncode == 3 and out.stdout == "cold\n" and "starting the run cold" in out.stderr, out.stderr
    assert time.monotonic() - started < 30  # not the client's 120 s wait for a server coming up

    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # takes the request, ends before the fork
    dying.bind(str(tmp_path / "dying.sock"))
    dying.listen(1)

    def die() -> None:
        conn, _ = dying.accept()
        while conn.recv(1 << 16):
            pass
        conn.close()

    server = threading.Thread(target=die)
    server.start()
    out = run_client(tmp_path / "dying.sock")
    server.join()
    dying.close()
    assert out.returncode == 3 and out.stdout == "cold\n" and "starting the run cold" in out.stderr, out.stderr


# The server with a stand-in for its imports, and a parent that is not its own: it leaves at
# once, by `os._exit`, which prints what the collector does first.
SERVE = """
import gc, os
from stepjepa.training import warm
warm.PRELOAD = ("probe_preload",)
leave = os._exit
os._exit = lambda status: (print("served", gc.isenabled(), gc.get_freeze_count() > 0, flush=True), leave(status))
warm.serve(%r, -1)
"""


@pytest.mark.cli
def test_the_server_imports_without_the_collector_and_then_freezes_the_imports(tmp_path):
    (tmp_path / "probe_preload.py").write_text("import gc\nprint('importing', gc.isenabled(), flush=True)\n")
    (tmp_path / "server").mkdir()
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    code = SERVE % str(tmp_path / "server" / "s.sock")
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "importing False\nserved True True\n"


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


def test_the_reuse_key_follows_the_library_the_packages_the_environment_and_the_folder(tmp_path, monkeypatch):
    library, site = tmp_path / "stepjepa", tmp_path / "site-packages"
    (library / "tracking").mkdir(parents=True)
    (library / "tracking" / "run.py").write_text("x = 1\n")
    site.mkdir()
    keys = [warm.reuse_key(library, [str(site)])]
    # read at each call, never at import: a sweep logging elsewhere, or the next test, reuses it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("PYTEST_CURRENT_TEST", "tests/x.py::test_next (call)")
    assert warm.reuse_key(library, [str(site)]) == keys[0]
    changes = [
        # tracking/ too, which a run's cache key leaves out: a run executes the server's copy
        lambda: (library / "tracking" / "run.py").write_text("x = 2\n"),
        lambda: os.utime(site, ns=(0, site.stat().st_mtime_ns + 1)),  # a package installed
        lambda: monkeypatch.setenv("HF_HUB_OFFLINE", "0" if os.environ.get("HF_HUB_OFFLINE") == "1" else "1"),
        lambda: monkeypatch.chdir(tmp_path),
    ]
    for change in changes:
        change()
        keys.append(warm.reuse_key(library, [str(site)]))
    assert len(set(keys)) == len(keys)


# Sweeps (warm_starts blocks) one after the other in one process, run from a copy of the library
# in the current folder: after each, the warm servers this process has.
SWEEPS = r"""
import json, os, signal, sys
from pathlib import Path
import psutil
from stepjepa.training import launch

def servers():
    found = []
    for child in psutil.Process().children():
        try:
            if "--serve" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            pass
    return found

seen = []
for step in sys.argv[1:]:
    if step == "edit":  # the library changes between two sweeps
        with open("stepjepa/tracking/__init__.py", "a") as fh:
            fh.write("# edited\n")
    if step == "kill":  # the server died between two sweeps
        for pid in servers():
            os.kill(pid, signal.SIGKILL)
            # Dead once waitable (left for its Popen to reap): its main thread shows as a zombie
            # while its other threads still exit, and with them its socket.
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    cmd = [sys.executable, "-m", "stepjepa.cli", "score", "done.jsonl"]
    if step == "nothing":  # a run the server cannot take, as when a sweep reuses all its runs
        cmd = [sys.executable, "-c", "pass"]
    with launch.warm_starts():
        launch.run_logged(cmd, dict(os.environ), Path("run.log"))
        seen.append(servers())
print(json.dumps(seen))
"""


@pytest.mark.cli
def test_a_process_starts_its_warm_server_with_its_first_warm_run_and_keeps_it_while_it_fits(tmp_path):
    shutil.copytree(ROOT / "stepjepa", tmp_path / "stepjepa")
    (tmp_path / "done.jsonl").write_text(json.dumps({"completion": "so #### 42", "answer": "42"}) + "\n")
    steps = ["nothing", "warm", "warm", "edit", "kill"]
    out = subprocess.run(
        [PY, "-c", SWEEPS, *steps],
        cwd=tmp_path,
        env=os.environ | {"PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    nothing, first, again, edited, restarted = json.loads(out.stdout)
    assert nothing == []  # a sweep that launches no run it could take starts no server
    assert len(first) == 1 and again == first  # the next sweep uses the same server
    assert len(edited) == 1 and edited != first  # the library changed: a new one, the old one stopped
    assert len(restarted) == 1 and restarted != edited  # it had died: a new one
    assert all_gone(first + edited + restarted, timeout=10)  # none outlives the process
    log = (tmp_path / "run.log").read_text()
    assert log.count('"accuracy_strict": 1.0') == 4 and "starting the run cold" not in log, log[-2000:]
