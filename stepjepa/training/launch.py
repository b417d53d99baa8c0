"""Launching one training run as its own `accelerate launch` process.

A run in its own process cannot take the sweep down when it crashes or runs out of
memory. On GPU machines each run is pinned to one device from a shared pool, so a sweep
runs one config per visible GPU; on CPU the pool has a single slot.

Children never outlive their launcher: each runs in its own process group, which gets
the launcher's SIGTERM/SIGINT (`forward_signals`), and a watchdog process kills every
descendant of the launcher when it dies, kill -9 included (`watch_descendants`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from stepjepa import startup
from stepjepa.training.warm import WarmStarter


class RunFailed(RuntimeError):
    """A training or evaluation process exited non-zero; the message ends with its log tail.

    `code` is its exit status (negative: killed by that signal); `stopped` says it ended
    on SIGTERM/SIGINT (preemption, Ctrl-C): its MLflow run is KILLED, not FAILED.
    """

    def __init__(self, message: str, code: int | None = None):
        super().__init__(message)
        self.code = code

    @property
    def stopped(self) -> bool:
        return self.code in (128 + signal.SIGTERM, 128 + signal.SIGINT, -signal.SIGTERM, -signal.SIGINT)


def process_main(main: Callable[[], int | None], preload: tuple[str, ...] = ()) -> NoReturn:
    """Run `main` as a process's entry point (`if __name__ == "__main__"`) and exit with its status.

    `preload` names modules `main` would import later. Everything imported by then lives as
    long as the process: a process that started with the cyclic collector off
    (`stepjepa.startup`) gets it back on, with all that frozen.
    """
    startup.resume(preload)
    raise SystemExit(main())


# What a GPU driver puts in /dev (NVIDIA's, WSL 2's, AMD ROCm's). Without any, torch counts no
# device; importing it only to learn that cost every sweep process ~1.5 CPU-s.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg", "/dev/kfd")


def visible_gpus() -> list[int]:
    if not any(os.path.exists(path) for path in GPU_DEVICE_FILES):
        return []
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # no CUDA build or no driver: a CPU machine
        return []


def usable_cores() -> int:
    """The cores this process may run on (a container's or `taskset`'s share, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


class DeviceSlots:
    """A thread-safe pool of devices: `None` stands for a CPU slot.

    CPU slots share the cores: each run gets `cpu_threads` torch threads (the cores split
    evenly between the slots), so that two runs side by side do not each start one thread per
    core and spin-wait on each other. A small model gains more from two single-thread runs
    than from one two-thread run (benchmarks/results/cpu-lanes.md)."""

    def __init__(self, gpus: list[int], cpu_slots: int = 1):
        self._free: queue.Queue[int | None] = queue.Queue()
        for slot in gpus or [None] * cpu_slots:
            self._free.put(slot)
        self.size = self._free.qsize()
        self.gpus = list(gpus)
        self.cpu_threads = None if gpus or cpu_slots == 1 else max(1, usable_cores() // cpu_slots)

    def env(self, slot: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a run on `slot`: `device_env`, with this pool's thread share on a
        CPU slot unless the user set OMP_NUM_THREADS."""
        env = device_env(slot, extra)
        if slot is None and self.cpu_threads is not None and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(self.cpu_threads)
        return env

    @contextlib.contextmanager
    def acquire(self) -> Iterator[int | None]:
        slot = self._free.get()
        try:
            yield slot
        finally:
            self._free.put(slot)


def train_command(
    params: Path,
    data: Path,
    out: Path,
    gpu: int | None,
    resume: bool,
    accelerate_config: Path | None = None,
    run_name: str | None = None,
    val_data: Path | None = None,
    evaluate: tuple[Path, Path, Path | None] | None = None,
) -> list[str]:
    """`python -m accelerate.commands.launch ... -m stepjepa.training.train ...` for one run; with
    `evaluate` = (folder holding the eval config.yaml, questions, held-out rows), the run
    evaluates its model on them in the same process once it is saved. Every setting comes
    from `params`, the run's resolved config.yaml: nothing is overridden on the command line."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if accelerate_config:
        cmd += ["--config_file", str(accelerate_config)]
    else:
        cmd += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if gpu is None:
            cmd.append("--cpu")
    cmd += ["-m", "stepjepa.training.train", "--params", str(params), "--data", str(data), "--out", str(out)]
    if resume:
        cmd.append("--resume")
    if run_name:
        cmd += ["--run-name", run_name]
    if val_data:
        cmd += ["--val-data", str(val_data)]
    if evaluate:
        folder, questions, heldout = evaluate
        cmd += ["--evaluate", str(folder), "--evaluate-data", str(questions)]
        cmd += ["--evaluate-heldout", str(heldout)] if heldout else []
    return cmd


def evaluate_command(
    model_dir: Path, config_file: Path, data: Path, out: Path, heldout: Path | None = None
) -> list[str]:
    """`stepjepa evaluate` of one trained model; every setting comes from `config_file`."""
    cmd = [
        sys.executable,
        "-m",
        "stepjepa.cli",
        "evaluate",
        "--model",
        str(model_dir),
        "--params",
        str(config_file),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
    ]
    return cmd + (["--heldout", str(heldout)] if heldout else [])


def device_env(gpu: int | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ) | (extra or {})
    if gpu is None:
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


# Run by `watch_descendants` as `python -c WATCHDOG PID`: every second it notes the
# descendants of PID; once PID is gone (its child is re-parented), it sends SIGTERM to
# those still alive, waits GRACE seconds for them to checkpoint, then SIGKILL.
WATCHDOG = r"""
import os, signal, sys, time
import psutil
parent, grace = int(sys.argv[1]), float(sys.argv[2])
seen = {}
def note():
    try:
        for p in psutil.Process(parent).children(recursive=True):
            if p.pid != os.getpid():
                seen.setdefault(p.pid, p)
    except psutil.Error:
        pass
while os.getppid() == parent:
    note()
    time.sleep(1.0)
alive = []
for p in seen.values():
    try:
        if p.is_running():
            alive += [p, *p.children(recursive=True)]
    except psutil.Error:
        pass
for p in alive:
    try:
        p.terminate()
    except psutil.Error:
        pass
gone, left = psutil.wait_procs(alive, timeout=grace)
for p in left:
    try:
        p.kill()
    except psutil.Error:
        pass
"""

_WATCHDOG: subprocess.Popen | None = None
GRACE_S = 30.0
"""Seconds between SIGTERM and SIGKILL for children left behind (time to checkpoint)."""


def watch_descendants(grace: float = GRACE_S) -> None:
    """Make every process this one starts (and theirs) die with it, even by kill -9.

    Idempotent. A watchdog process of its own session notes this process's descendants
    every second; a descendant started less than a second before the death can escape.
    """
    global _WATCHDOG
    if _WATCHDOG is None or _WATCHDOG.poll() is not None:
        _WATCHDOG = subprocess.Popen(
            [sys.executable, "-c", WATCHDOG, str(os.getpid()), str(grace)],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )


_CHILDREN: set[int] = set()
_CHILDREN_LOCK = threading.Lock()
_STOPPED_BY: int | None = None  # the signal `forward_signals` forwarded: no new child starts


def signal_children(signum: int) -> None:
    """Send `signum` to the process group of every child `run_logged` is running."""
    with _CHILDREN_LOCK:
        groups = list(_CHILDREN)
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)


@contextlib.contextmanager
def forward_signals(*signals: int) -> Iterator[None]:
    """In the main thread: `signals` (default SIGTERM and SIGINT) also go to every running
    child's group (they checkpoint and exit 143/130), then reach this process's own handler
    as before. Where that was the default, SIGTERM raises SystemExit(143) instead of killing
    this process outright: `run_logged` then waits for its child to save, as it does on Ctrl-C.
    From then until a new block begins, `run_logged` starts no child: a sweep's threads outlive
    its main thread's unwinding for a moment, and one whose slot the stopped run freed would
    start the next run."""
    global _STOPPED_BY
    if threading.current_thread() is not threading.main_thread():  # only there can Python set handlers
        yield
        return
    _STOPPED_BY = None  # a new block: whatever stopped an earlier one is over
    previous = {}

    def forward(signum, frame):
        global _STOPPED_BY
        _STOPPED_BY = signum
        signal_children(signum)
        handler = previous[signum]
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    for sig in signals or (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, forward)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# Training logs `step N/M loss=... eta=...` every `train.log_every` steps (stepjepa.training.loop),
# evaluation `evaluate SPLIT N/M ... eta=...` every batch (stepjepa.evaluation.evaluate); a sweep
# forwards those lines so that its console shows how far each run is (stepjepa.progress).
PROGRESS = re.compile(r"\bINFO ((?:step|evaluate \w+) \d+/\d+\b.*)$")


_WARM: WarmStarter | None = None  # set by `warm_starts`


@contextlib.contextmanager
def warm_starts(enabled: bool = True) -> Iterator[None]:
    """While the block runs, `run_logged` starts the runs it can from a warm server
    (stepjepa/training/warm.py) instead of a new Python each: the process's, started by the
    block's first such run or kept from an earlier block. Nested blocks share the first."""
    global _WARM
    if not enabled or _WARM is not None:
        yield
        return
    _WARM = WarmStarter()
    try:
        yield
    finally:
        _WARM = None


def run_logged(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    cwd: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> None:
    """Run `cmd` with stdout and stderr appended to `log_path`; raise `RunFailed` with the
    last lines of the log when it exits non-zero (a kill or OOM included).

    `on_progress` gets the text of each progress line (`step 20/150 loss=... eta=1m05s`,
    `evaluate validation 64/200 ... eta=12s`).
    The child runs in its own process group: `signal_children` reaches it, and it is
    stopped (SIGTERM, then SIGKILL) if this call ends early, by an exception or an interrupt.
    """
    watch_descendants()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        if (stopped_by := _STOPPED_BY) is not None:
            log.write(f"not started: this process is stopping ({signal.Signals(stopped_by).name})\n")
            raise RunFailed(f"not started: this process is stopping; log {log_path}", 128 + stopped_by)
        log.flush()
        # Text mode reads a progress bar's "\r" redraws as lines, so the log stays readable.
        proc = subprocess.Popen(
            _WARM.command(cmd) if _WARM is not None else cmd,
            env=env,
            cwd=cwd,
            stdout=log if on_progress is None else subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            process_group=0,
        )  # its own group: a terminal's Ctrl-C reaches it once, forwarded
        with _CHILDREN_LOCK:
            _CHILDREN.add(proc.pid)
            stopped_by = _STOPPED_BY  # since the check above: `signal_children` came too early for it
        if stopped_by is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, stopped_by)
        try:
            for line in proc.stdout if on_progress else ():
                log.write(line)
                log.flush()
                if found := PROGRESS.search(line.rstrip("\n")):
                    on_progress(found[1])
            code = proc.wait()
        finally:
            with _CHILDREN_LOCK:
                _CHILDREN.discard(proc.pid)
            _stop_group(proc, log)
    if code != 0:
        tail = "".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines(True)[-30:])
        raise RunFailed(f"exited with code {code}; full log {log_path}; last lines:\n{tail}", code)


def _stop_group(proc: subprocess.Popen, log, grace: float = GRACE_S) -> None:
    """End what is left of `proc`'s group: SIGTERM it if `proc` still runs (this call ended
    early), give the group `grace` s (a training process checkpointing after its launcher
    died on the same signal) while its output still goes to `log`, then SIGKILL the rest."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    drain = threading.Thread(target=_copy, args=(proc.stdout, log), daemon=True)
    if proc.stdout:
        drain.start()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(proc.pid):
        proc.poll()  # reap the leader, or it counts as a member
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout:
        drain.join(timeout=5)
        proc.stdout.close()


def _copy(source, log) -> None:
    with contextlib.suppress(OSError, ValueError):  # closed under it: the group is gone
        for line in source:
            log.write(line)
            log.flush()


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
