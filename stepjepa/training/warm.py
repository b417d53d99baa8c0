"""Warm starts: CPU runs forked from a process that has already imported torch, transformers,
accelerate and MLflow, instead of each run paying ~7 CPU-s to import them again.

A sweep of small CPU runs spends a fifth of each run starting Python twice (the `accelerate
launch` process, then the training process) and importing the same libraries every time.
`WarmStarter` keeps one server process per sweep with those imports done. A run's command
(`launch.train_command`, `launch.evaluate_command`) becomes a tiny client,

    python -m stepjepa.training.warm --socket PATH -- \
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

import contextlib
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# What the server imports once: what every run would import first.
PRELOAD = (
    "torch",
    "transformers",
    "accelerate",
    "accelerate.commands.launch",
    "mlflow",
    "stepjepa.training.train",
    "stepjepa.evaluation.evaluate",
    "stepjepa.cli",
)
LAUNCH_MODULE = "accelerate.commands.launch"


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


class WarmStarter:
    """One warm server for the runs of a sweep (`with WarmStarter() as warm:`)."""

    def __init__(self) -> None:
        self._folder = tempfile.mkdtemp(prefix="stepjepa-warm-")
        self.socket_path = str(Path(self._folder) / "server.sock")
        self._server: subprocess.Popen | None = None

    def __enter__(self) -> WarmStarter:
        # Its own process group: a terminal's Ctrl-C goes to the sweep, which forwards it to
        # the runs; the server itself ends when the sweep does (it watches its parent).
        self._server = subprocess.Popen(
            [sys.executable, "-m", "stepjepa.training.warm", "--serve", self.socket_path],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            process_group=0,
        )
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._server.wait(timeout=10)
            if self._server.poll() is None:
                self._server.kill()
                self._server.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
            os.rmdir(self._folder)

    def command(self, cmd: list[str]) -> list[str]:
        """`cmd` through the server when it can take it, else `cmd` unchanged."""
        if self._server is None or self._server.poll() is not None or local_module(cmd) is None:
            return cmd
        return [sys.executable, "-m", "stepjepa.training.warm", "--socket", self.socket_path, "--", *cmd]


# --- the client: what a run's command is; imports nothing heavy ---------------------------


def client(socket_path: str, cmd: list[str], wait_s: float = 120.0) -> int:
    """Have the server run `cmd` with this process's stdio, environment, folder and group;
    return its exit status (a negative one re-raised as that signal by `main`)."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn.connect(socket_path)
            break
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:  # no server (it failed to start, or ended): start cold
                print(f"warm start: no server at {socket_path}; starting the run cold", file=sys.stderr)
                os.execv(cmd[0], cmd)
            time.sleep(0.05)
    # The run is in this group and hears the group's signals itself; this process waits for it.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    request = json.dumps({"cmd": cmd, "env": dict(os.environ), "cwd": os.getcwd(), "pgid": os.getpgrp()})
    socket.send_fds(conn, [request.encode()], [0, 1, 2])
    conn.shutdown(socket.SHUT_WR)
    reply = b""
    while chunk := conn.recv(64):
        reply += chunk
    if len(reply) != 4:
        print("warm start: the server went away before the run ended", file=sys.stderr)
        return 1
    return struct.unpack("!i", reply)[0]


# --- the server ------------------------------------------------------------------------------


def serve(socket_path: str) -> None:
    """Accept runs until the parent (the sweep) is gone; each in a forked child."""
    parent = os.getppid()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)  # clients queue here while the imports below run
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import gc

    gc.collect()
    gc.freeze()  # what every child shares stays shared: no collection writes to those pages
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
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


def _start(conn: socket.socket, listener: socket.socket) -> int | None:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    while chunk := conn.recv(1 << 20):
        data += chunk
    try:
        request = json.loads(data)
    except ValueError:
        for fd in fds:
            os.close(fd)
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
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
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
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
        serve(argv[1])
        return 0
    if argv[:1] == ["--socket"] and argv[2:3] == ["--"]:
        code = client(argv[1], argv[3:])
        if code < 0:  # killed by a signal: end the same way, as a cold run would have
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        return code
    print("usage: python -m stepjepa.training.warm (--serve PATH | --socket PATH -- CMD ...)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
