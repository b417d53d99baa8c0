"""Warm starts: CPU runs forked from a process that has already imported torch, transformers,
accelerate and MLflow, instead of each run paying ~7 CPU-s to import them again.

A sweep of small CPU runs spends a fifth of each run starting Python twice (the `accelerate
launch` process, then the training process) and importing the same libraries every time.
A process keeps one server with those imports done: the first run a sweep launches through
`WarmStarter` starts it (a sweep that trains and evaluates nothing starts none), and later
sweeps of the same process (several in-process flows, a test session's worker) use it again
while it is what a new server would be (`reuse_key`). It ends with that process. A run's command
(`launch.train_command`, `launch.evaluate_command`) becomes a tiny client,

    python -m stepjepa.training.warm --socket PATH SWEEP_PID -- \
        python -m accelerate.commands.launch ... -m stepjepa.training.train ...

which imports nothing heavy. The client hands the server its stdin, stdout and stderr, its
environment, folder and process group; the server forks a child that joins that group and runs
the command as the original would have (for `accelerate launch`, with the environment
accelerate's own simple launcher computes); the client exits with the child's status. So
`launch.run_logged` sees what it saw before: one process group to read, signal and wait for,
the same log, the same exit codes (a run stopped by SIGTERM still reads as stopped).

Only commands that would run as one local process take this path (`accelerate launch` with one
process and no config file, `python -m stepjepa...`); any other runs as before. If the server
is gone, runs start cold (the client `exec`s the original command).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NoReturn

from stepjepa import startup

# What the server imports once: what every run would import first.
PRELOAD = (
    "torch",
    "transformers",
    "accelerate",
    "accelerate.commands.launch",
    "mlflow",
    "stepjepa.training.train",
    "stepjepa.training.run",  # train.py imports the run (peft, scipy, ...) only once its config is valid
    "stepjepa.evaluation.evaluate",
    "stepjepa.cli",
)
LAUNCH_MODULE = "accelerate.commands.launch"
LIBRARY = Path(__file__).resolve().parents[1]  # stepjepa/
# Variables that change between the sweeps of one process and that no module reads at import:
# where MLflow logs is read at each call (a run gets its own with its environment), and the
# server imports no Prefect (`PREFECT_*`, left out by `reuse_key`).
PER_CALL_ENV = ("MLFLOW_TRACKING_URI",)
# Signals a run hears from its group; held back in a run's first moments after the fork.
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
STARTED = b"S"  # the server's reply as it starts a run; the run's exit status (4 bytes) follows


def local_module(cmd: list[str]) -> tuple[list[str], str, list[str]] | None:
    """(accelerate's arguments or [], module, its arguments) when `cmd` runs one local
    `python -m stepjepa...` process; None for anything else (several processes, a config file,
    another program)."""
    if len(cmd) < 3 or cmd[0] != sys.executable or cmd[1] != "-m":
        return None
    if cmd[2] != LAUNCH_MODULE:
        return ([], cmd[2], cmd[3:]) if cmd[2].startswith("stepjepa.") else None
    rest = cmd[3:]
    if "-m" not in rest:
        return None
    split = rest.index("-m")
    accel, module, args = rest[:split], rest[split + 1], rest[split + 2 :]
    options = dict(zip(accel[::2], accel[1::2]))
    single = options.get("--num_processes") == "1" and options.get("--num_machines") == "1"
    if not single or "--config_file" in accel or not module.startswith("stepjepa."):
        return None
    return accel, module, args


def reuse_key(library: Path = LIBRARY, packages: list[str] | None = None) -> str:
    """What a server started now could differ in from one this process started before: it is
    used again only while this is the same.

    A server keeps what it imported at its start, in the environment and folder it started in.
    Its runs get their own environment and folder (`_child`), but what a module read at import
    stays: HF_HUB_OFFLINE in huggingface_hub, OMP_NUM_THREADS in torch, cache folders under
    HOME, debug folders under the working folder (torch._dynamo). Hence the environment (but
    what no import reads, `PER_CALL_ENV`) and the folder, rather than a list of the variables
    read at import (hundreds, in torch alone) that nobody could keep true; every source file of
    the library, tracking/ included (a run's cache key leaves it out,
    `stepjepa.sweep.specs.library_sources`, but the runs execute the server's copy); and the
    times of the site-packages folders, which an install or a removal changes."""
    import sysconfig

    env = {k: v for k, v in os.environ.items() if k not in PER_CALL_ENV and not k.startswith("PREFECT_")}
    if "PYTEST_CURRENT_TEST" in env:  # a new value for each test; MLflow reads only whether it is set
        env["PYTEST_CURRENT_TEST"] = "set"
    digest = hashlib.sha256(json.dumps([sorted(env.items()), os.getcwd()]).encode())
    for folder in packages if packages is not None else sorted({sysconfig.get_path(k) for k in ("purelib", "platlib")}):
        with contextlib.suppress(OSError):
            digest.update(f"{folder} {os.stat(folder).st_mtime_ns}".encode())
    for path in sorted(library.rglob("*.py")):
        digest.update(str(path.relative_to(library)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _Server:
    """A server process, its socket, and the `reuse_key` it started with."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.owner = os.getpid()  # a forked copy of this process must not stop it
        self._folder = tempfile.mkdtemp(prefix="stepjepa-warm-")
        self.socket_path = str(Path(self._folder) / "server.sock")
        # Its own process group: a terminal's Ctrl-C goes to the sweep, which forwards it to
        # the runs; the server itself ends when this process does (it watches its parent).
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stepjepa.training.warm", "--serve", self.socket_path, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for path in (self.socket_path, self.socket_path + ".new"):  # `.new`: killed before it listened
            with contextlib.suppress(OSError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(self._folder)


_SERVER: _Server | None = None  # this process's, kept from one sweep to the next
_SERVER_LOCK = threading.Lock()


def process_server() -> _Server | None:
    """This process's warm server: the one it has if that still runs and fits (`reuse_key`),
    else a new one (the old one stopped); None when none can be started (runs start cold)."""
    global _SERVER
    key = reuse_key()
    with _SERVER_LOCK:
        ours = _SERVER is not None and _SERVER.owner == os.getpid()
        if ours and _SERVER.key == key and _SERVER.running():
            return _SERVER
        if ours:
            _SERVER.stop()
        _SERVER = None
        try:
            _SERVER = _Server(key)
        except OSError as err:
            import logging

            logging.getLogger(__name__).warning("warm start: no server (%s); the runs start cold", err)
        return _SERVER


@atexit.register
def _stop_server() -> None:
    if _SERVER is not None and _SERVER.owner == os.getpid():
        _SERVER.stop()


class WarmStarter:
    """Warm starts for the runs of one sweep: `command(cmd)` for each. The first command the
    server can take gets this process's server (`process_server`: started then, or the one an
    earlier sweep left); the sweep's later commands use the same. A server that dies during the
    sweep is not started again before the next sweep: its remaining runs start cold."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # a sweep's runs start from several threads
        self._asked = False
        self._server: _Server | None = None

    def command(self, cmd: list[str]) -> list[str]:
        """`cmd` through the server when it can take it, else `cmd` unchanged."""
        if local_module(cmd) is None:
            return cmd
        with self._lock:
            if not self._asked:
                self._asked = True
                self._server = process_server()
        if self._server is None or not self._server.running():
            return cmd
        client = ["-m", "stepjepa.training.warm", "--socket", self._server.socket_path, str(os.getpid()), "--"]
        return [sys.executable, *client, *cmd]


# --- the client: what a run's command is; imports nothing heavy ---------------------------


def client(socket_path: str, parent: int, cmd: list[str], wait_s: float = 120.0) -> int:
    """Have the server run `cmd` with this process's stdio, environment, folder and group;
    return its exit status (a negative one re-raised as that signal by `main`). `parent` is
    the sweep's process: once it is gone, the client stops waiting for a server."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.connect(socket_path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as err:
            if os.getppid() != parent:  # the sweep is gone (kill -9): its run must not start after it
                return 1
            # Refused: the path is there, its server is not (killed, or dying: `serve` listens
            # before the path exists). Missing: not up yet, or it failed to start.
            if isinstance(err, ConnectionRefusedError) or time.monotonic() > deadline:
                _start_cold(f"no server at {socket_path}", cmd)
            time.sleep(0.05)
    # The run is in this group and hears the group's signals itself; this process waits for it.
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    request = json.dumps({"cmd": cmd, "env": dict(os.environ), "cwd": os.getcwd(), "pgid": os.getpgrp()})
    reply = b""
    with contextlib.suppress(OSError):  # reset: the server died (a queued connection, or under the run)
        socket.send_fds(conn, [request.encode()], [0, 1, 2])
        conn.shutdown(socket.SHUT_WR)
        while chunk := conn.recv(64):
            reply += chunk
    if not reply.startswith(STARTED):  # a server dying as the sweep began: the run never started
        _start_cold("the server went away before it started the run", cmd)
    if len(reply) != len(STARTED) + 4:
        print("warm start: the server went away before the run ended", file=sys.stderr)
        return 1
    return struct.unpack("!i", reply[len(STARTED) :])[0]


def _start_cold(why: str, cmd: list[str]) -> NoReturn:
    print(f"warm start: {why}; starting the run cold", file=sys.stderr)
    for sig in GROUP_SIGNALS:  # an ignored signal stays ignored across exec
        signal.signal(sig, signal.SIG_DFL)
    os.execv(cmd[0], cmd)


# --- the server ------------------------------------------------------------------------------


def serve(socket_path: str, parent: int) -> NoReturn:
    """Accept runs until `parent` (the process whose sweeps use it) is gone or stops it with
    SIGTERM; each in a forked child. `parent` comes from the parent itself: one killed while
    this process started would otherwise be mistaken for init."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Listening before the path exists: a client refused at the path knows the server is dead.
    listener.bind(socket_path + ".new")
    listener.listen(64)  # clients queue here while the imports below run
    os.rename(socket_path + ".new", socket_path)
    # The imports without the cyclic collector (6.1 CPU-s with it, 5.4 without: stepjepa/startup.py),
    # then what every child shares is frozen and stays shared: no collection writes to those
    # pages. Their garbage is frozen with them, not collected first: ~12,000 objects whose
    # collection cost each server 0.5 CPU-s (of the 845,000 the imports leave).
    startup.pause()
    startup.resume(PRELOAD)
    signal.signal(signal.SIGTERM, lambda *_: _leave(socket_path))
    waiting: dict[int, socket.socket] = {}
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    while os.getppid() == parent:
        for _ in selector.select(timeout=0.2):
            conn, _ = listener.accept()
            pid = _start(conn, listener)
            if pid is None:
                conn.close()
            else:
                waiting[pid] = conn
        _reap(waiting)
    _leave(socket_path)


def _leave(socket_path: str) -> NoReturn:
    # At once: the runs are processes of their own, and nothing here is worth saving; the
    # interpreter's teardown of what was imported would cost ~0.2 CPU-s.
    with contextlib.suppress(OSError):
        os.unlink(socket_path)
        os.rmdir(os.path.dirname(socket_path))
    os._exit(0)


def _start(conn: socket.socket, listener: socket.socket) -> int | None:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while chunk := conn.recv(1 << 20):
        data += chunk
    try:
        request = json.loads(data)
        # Before the fork: a client that never reads this knows its run never started.
        conn.sendall(STARTED)
    except (ValueError, OSError):
        for fd in fds:
            os.close(fd)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    # Until the child has the run's handlers (`_child`), a signal waits: the server's SIGTERM
    # handler would end the child as the server (its socket removed, exit 0).
    signal.pthread_sigmask(signal.SIG_BLOCK, GROUP_SIGNALS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
        for fd in fds:
            os.close(fd)
        return pid
    listener.close()
    conn.close()
    os._exit(_child(request, fds))


def _reap(waiting: dict[int, socket.socket]) -> None:
    for pid in list(waiting):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            conn = waiting.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("!i", code))
            conn.close()


def _child(request: dict, fds: list[int]) -> int:
    """In the forked child: become the run the client stands for, run it, return its status."""
    import atexit
    import random
    import runpy

    with contextlib.suppress(OSError):
        os.setpgid(0, request["pgid"])
    for target, fd in zip((0, 1, 2), fds, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    for sig in GROUP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, GROUP_SIGNALS)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    accel, module, args = local_module(request["cmd"])
    if accel:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils.launch import prepare_simple_launcher_cmd_env

        parsed, _, _ = _validate_launch_command(launch_command_parser().parse_args([*accel, "-m", module, *args]))
        _, env = prepare_simple_launcher_cmd_env(parsed)
        os.environ.update(env)
    random.seed()  # not the server's state, shared by every child
    import torch

    if threads := os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(int(threads))  # read at import in a cold start; torch is imported here
    sys.argv = [module, *args]
    sys.modules.pop(module, None)  # as in a new process: `-m` runs the module's code as __main__ only
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int | None):
            print(stop.code, file=sys.stderr)
    except BaseException:  # what an uncaught exception does to a cold process
        import traceback

        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], int(argv[2]))
    if argv[:1] == ["--socket"] and argv[3:4] == ["--"]:
        code = client(argv[1], int(argv[2]), argv[4:])
        if code < 0:  # killed by a signal: end the same way, as a cold run would have
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        return code
    usage = "usage: python -m stepjepa.training.warm (--serve PATH PARENT_PID | --socket PATH PARENT_PID -- CMD ...)"
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
