"""Launching one training run as its own `accelerate launch` process.

A run in its own process cannot take the sweep down when it crashes or runs out of
memory. On GPU machines each run is pinned to one device from a shared pool, so a sweep
runs one config per visible GPU; on CPU the pool has a single slot.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path


class RunFailed(RuntimeError):
    """A training or evaluation process exited non-zero; the message ends with its log tail."""


def visible_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # no CUDA build or no driver: a CPU machine
        return []


class DeviceSlots:
    """A thread-safe pool of devices: `None` stands for a CPU slot."""

    def __init__(self, gpus: list[int], cpu_slots: int = 1):
        self._free: queue.Queue[int | None] = queue.Queue()
        for slot in gpus or [None] * cpu_slots:
            self._free.put(slot)
        self.size = self._free.qsize()

    @contextlib.contextmanager
    def acquire(self) -> Iterator[int | None]:
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)


def train_command(
    params: Path, data: Path, out: Path, overrides: list[str], gpu: int | None, resume: bool,
    accelerate_config: Path | None = None, run_name: str | None = None, val_data: Path | None = None,
) -> list[str]:
    """`python -m accelerate.commands.launch ... -m stepjepa.train ...` for one run."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if gpu is None:
            cmd.append("--cpu")
    cmd += ["-m", "stepjepa.train", "--params", str(params), "--data", str(data), "--out", str(out)]
    if overrides:
        cmd += ["--set", *overrides]
    if resume:
        cmd.append("--resume")
    if run_name:
        cmd += ["--run-name", run_name]
    if val_data:
        cmd += ["--val-data", str(val_data)]
    return cmd


def evaluate_command(model_dir: Path, config_file: Path, data: Path, out: Path, heldout: Path | None = None) -> list[str]:
    """`stepjepa evaluate` of one trained model; every setting comes from `config_file`."""
    cmd = [sys.executable, "-m", "stepjepa.cli", "evaluate", "--model", str(model_dir), "--params", str(config_file),
           "--data", str(data), "--out", str(out), "--no-progress"]
    return cmd + (["--heldout", str(heldout)] if heldout else [])


def eval_args(eval_cfg) -> list[str]:
    """`stepjepa evaluate` flags that carry a run's resolved `eval` section."""
    args = []
    for key, value in eval_cfg.model_dump().items():
        if key == "split":  # the split is chosen by the data file
            continue
        if key == "limit" and value is None:  # said explicitly, or the params file's limit would apply
            value = "all"
        if value is not None:
            args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def device_env(gpu: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ) | (extra or {})
    if gpu is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


# Training logs `step N/M loss=...` every `train.log_every` steps (stepjepa.loop); a sweep
# forwards those lines so that its console shows how far each run is.
PROGRESS = re.compile(r"\bINFO (step \d+/\d+\b.*)$")


def run_logged(cmd: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None,
               on_progress: Callable[[str], None] | None = None) -> None:
    """Run `cmd` with stdout and stderr appended to `log_path`; raise `RunFailed` with the
    last lines of the log when it exits non-zero (a kill or OOM included).

    `on_progress` gets the text of each training progress line (`step 20/150 loss=...`).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        if on_progress is None:
            code = subprocess.call(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        else:
            # Text mode reads a progress bar's "\r" redraws as lines, so the log stays readable.
            with subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, encoding="utf-8", errors="replace") as proc:
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if found := PROGRESS.search(line.rstrip("\n")):
                        on_progress(found[1])
                code = proc.wait()
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RunFailed(f"exited with code {code}; full log {log_path}; last lines:\n{tail}")