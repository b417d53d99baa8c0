"""Running one sweep run as a process: its log file, progress lines and failures."""

from __future__ import annotations

import os
import sys

import pytest

from stepjepa.training import launch
from stepjepa.training.launch import RunFailed, run_logged, train_command

# What a training process writes: tqdm redraws ("\r"), log lines, a progress line per log_every steps.
SCRIPT = r"""
import sys
sys.stdout.write("train:   0%|          | 0/4\rtrain:  50%|#####     | 2/4\r")
print("2026-11-25 10:00:00,000 stepjepa.training.loop INFO step 2/4 loss=3.1 lm_loss=3.1")
print("2026-11-25 10:00:01,000 stepjepa.training.loop INFO step 4/4 loss=2.9 lm_loss=2.9")
print("not a step 5/4 line", file=sys.stderr)
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.cli
@pytest.mark.parametrize("forward", [False, True])
def test_log_file_holds_everything_and_progress_lines_are_forwarded(tmp_path, forward):
    seen: list[str] = []
    log = tmp_path / "run" / "train.log"
    run_logged([sys.executable, "-c", SCRIPT, "0"], dict(os.environ), log, on_progress=seen.append if forward else None)
    text = log.read_text()
    assert text.startswith(f"$ {sys.executable} -c")
    assert "step 4/4 loss=2.9" in text and "not a step 5/4 line" in text and "50%|#####" in text
    assert seen == (["step 2/4 loss=3.1 lm_loss=3.1", "step 4/4 loss=2.9 lm_loss=2.9"] if forward else [])


@pytest.mark.cli
@pytest.mark.parametrize("forward", [False, True])
def test_a_failing_run_raises_with_the_log_tail(tmp_path, forward):
    log = tmp_path / "train.log"
    with pytest.raises(RunFailed, match=r"(?s)exited with code 3; full log .*train\.log.*not a step 5/4 line"):
        run_logged(
            [sys.executable, "-c", SCRIPT, "3"],
            dict(os.environ),
            log,
            on_progress=(lambda _: None) if forward else None,
        )


@pytest.mark.cli
def test_evaluation_progress_lines_are_forwarded_too(tmp_path):
    script = (
        'print("2026-12-01 08:00:00,000 stepjepa.evaluation.evaluate INFO evaluate validation 32/200 '
        'completions=41.2/s eta=4s")\nprint("evaluate 1/2 without a level is not a progress line")'
    )
    seen: list[str] = []
    run_logged([sys.executable, "-c", script], dict(os.environ), tmp_path / "evaluate.log", on_progress=seen.append)
    assert seen == ["evaluate validation 32/200 completions=41.2/s eta=4s"]


@pytest.mark.cli
def test_a_run_works_in_the_folder_it_is_given(tmp_path):
    log = tmp_path / "logs" / "train.log"
    run_logged([sys.executable, "-c", "import os; print('in', os.getcwd())"], dict(os.environ), log, cwd=tmp_path)
    assert f"in {tmp_path}\n" in log.read_text()


def test_a_training_run_reads_every_setting_from_its_config_file(tmp_path):
    cmd = train_command(
        tmp_path / "config.yaml", tmp_path / "train.parquet", tmp_path / "run", None, resume=True, run_name="sft_s0"
    )
    assert "--set" not in cmd and cmd[cmd.index("--params") + 1] == str(tmp_path / "config.yaml")
    assert cmd[-3:] == ["--resume", "--run-name", "sft_s0"] and "--cpu" in cmd


# Imported by the interpreter at start-up (PYTHONPATH): what the collector does around it.
PROBE = """
import atexit, gc, stepjepa
print("after import", gc.isenabled(), flush=True)
atexit.register(lambda: print("at exit", gc.isenabled(), gc.get_freeze_count() > 100_000, flush=True))
"""


# A training process that gets past its argument and config checks (`--help` stops before
# them, importing nothing heavy) and is refused once the run starts: its `--out` holds a run.
REFUSED_RUN = ["-m", "stepjepa.training.train", "--params", "{tmp}/params.yaml", "--data", "{tmp}/rows.parquet"]
REFUSED_RUN += ["--out", "{tmp}/done"]


@pytest.mark.cli
@pytest.mark.parametrize(
    "cmd, during_startup, status",
    [
        (REFUSED_RUN, False, 2),
        (["-m", "pipelines.sweep", "--help"], False, 0),
        (["-c", "import stepjepa.training.train"], True, 0),
        (["-m", "stepjepa.cli", "--help"], True, 0),
    ],
)
def test_a_training_process_imports_without_the_collector_and_then_freezes_them(tmp_path, cmd, during_startup, status):
    """Only the processes stepjepa/startup.py names (a training run's, a sweep's, ...) start
    with the cyclic collector off; once their imports are done it is back on with the start-up
    objects frozen. Any other import leaves it alone."""
    import subprocess

    from tests.support.train import write_checkable_rows

    (tmp_path / "sitecustomize.py").write_text(PROBE)
    # A model folder and rows that the checks before the imports pass (stepjepa/training/preflight.py).
    (tmp_path / "params.yaml").write_text(f"model: {{name_or_path: {tmp_path}}}\n")
    write_checkable_rows(tmp_path / "rows.parquet")
    (tmp_path / "done" / "model").mkdir(parents=True)
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [part.format(tmp=tmp_path) for part in cmd]
    out = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == status, out.stderr[-2000:]
    if status:
        assert "already holds a run" in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith(("after import", "at exit"))]
    assert lines[0] == f"after import {during_startup}"
    if not during_startup:
        assert lines[1] == "at exit True True"
    else:
        assert lines[1].startswith("at exit True")


def test_cpu_slots_split_the_cores_between_runs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch, "usable_cores", lambda: 4)
    two = launch.DeviceSlots([], cpu_slots=2)
    with two.acquire() as slot:
        env = two.env(slot, {"MLFLOW_RUN_ID": "abc"})
    assert env["OMP_NUM_THREADS"] == "2" and env["CUDA_VISIBLE_DEVICES"] == "" and env["MLFLOW_RUN_ID"] == "abc"
    assert launch.DeviceSlots([], cpu_slots=8).env(None)["OMP_NUM_THREADS"] == "1"  # never 0
    # One run alone keeps torch's own default (every core); a GPU run is not a CPU share.
    assert "OMP_NUM_THREADS" not in launch.DeviceSlots([], cpu_slots=1).env(None)
    assert "OMP_NUM_THREADS" not in launch.DeviceSlots([0, 1]).env(0)


def test_a_thread_count_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(launch, "usable_cores", lambda: 4)
    assert launch.DeviceSlots([], cpu_slots=2).env(None)["OMP_NUM_THREADS"] == "3"


@pytest.mark.cli
@pytest.mark.skipif(
    any(os.path.exists(p) for p in launch.GPU_DEVICE_FILES),
    reason="a GPU driver is here: torch counts the devices",
)
def test_a_machine_without_a_gpu_driver_counts_no_gpu_without_importing_torch():
    """A sweep process asks for the GPUs once; on a CPU machine importing torch only to hear
    "none" cost each of them ~1.5 CPU-s (its runs import torch in their own processes)."""
    import subprocess

    probe = (
        "import sys; from stepjepa.training.launch import visible_gpus; print(visible_gpus(), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["[]", "False"], out.stdout + out.stderr


def test_with_a_gpu_driver_torch_counts_the_devices(monkeypatch, tmp_path):
    import torch

    (tmp_path / "nvidiactl").touch()
    monkeypatch.setattr(launch, "GPU_DEVICE_FILES", (str(tmp_path / "nvidiactl"),))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert launch.visible_gpus() == [0, 1]
    monkeypatch.setattr(launch, "GPU_DEVICE_FILES", (str(tmp_path / "none"),))
    assert launch.visible_gpus() == []


# A sweep's main thread is stopped by a forwarded signal while one of its threads would still
# start the next run; then a new `forward_signals` block (the next sweep) runs it again.
STOPPED = """
import os, signal, sys
from pathlib import Path
from stepjepa.training import launch
cmd = [sys.executable, "-c", "open('ran', 'a').write('ran ')"]
with launch.forward_signals():
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        pass
try:
    launch.run_logged(cmd, dict(os.environ), Path("run.log"))
except launch.RunFailed as err:
    print("refused", err.stopped)
with launch.forward_signals():
    launch.run_logged(cmd, dict(os.environ), Path("run.log"))
"""


@pytest.mark.cli
def test_a_process_that_forwarded_a_stop_signal_starts_no_new_run(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, "-c", STOPPED], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "refused True\n" and (tmp_path / "ran").read_text() == "ran "
    assert "not started: this process is stopping (SIGINT)" in (tmp_path / "run.log").read_text()
