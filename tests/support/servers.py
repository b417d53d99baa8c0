"""Starting and stopping real servers (mlflow, prefect) on 127.0.0.1 for integration tests.

Every process is started in its own process group and killed with it, so a server's own
children (uvicorn workers, gunicorn) go too; if pytest itself is killed, the watchdog
conftest.py starts (`stepjepa.training.launch.watch_descendants`) stops them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str], cwd: Path | None = None) -> Iterator[subprocess.Popen]:
    """A background process whose output goes to `log`; its whole group is stopped on exit."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# `mlflow server` is a launcher: its CLI imports MLflow (~2.8 CPU-s), readies the store, then
# starts uvicorn as a child that imports MLflow's app all over again (~3.3 CPU-s). This runs
# the same CLI, but the uvicorn command it would start as that child runs in its own process,
# where MLflow is already imported: one start-up per server (to its first answer on a new
# store, 6.6 -> 3.4 CPU-s and 6.1 -> 3.6 s; 15 of a `make test`'s 17 servers). The server, its
# app, store and uvicorn are unchanged; `one_process=False` is the `mlflow server` that users
# run (the team stack keeps it).
_ONE_PROCESS = """
import os, sys
import mlflow.server
import uvicorn.main

def in_this_process(cmd, extra_env=None, **_):
    # Only the default uvicorn server, and no job runner (the CLI starts it after its child).
    assert cmd[1:3] == ["-m", "uvicorn"], cmd
    assert not mlflow.server.MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get(), "a job runner needs `mlflow server`"
    os.environ.update(extra_env or {})
    uvicorn.main.main(cmd[3:])

mlflow.server._exec_cmd = in_this_process
from mlflow.cli import cli
cli(sys.argv[1:])
"""


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    artifacts: Path,
    log: Path,
    env: dict[str, str],
    port: int | None = None,
    one_process: bool = True,
) -> Iterator[str]:
    port = port or free_port()  # a given port: a restart at the address clients already use
    launcher = [sys.executable, "-c", _ONE_PROCESS] if one_process else [str(BIN / "mlflow")]
    cmd = [
        *launcher,
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
    ]
    # As the project runs it (Makefile, docker/compose.yaml): without MLflow's job runner.
    env = env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": env.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    with process(cmd, log, env) as proc:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc, log)
        yield url


@contextlib.contextmanager
def prefect_server(log: Path, env: dict[str, str], port: int | None = None) -> Iterator[str]:
    port = port or free_port()  # a given port: one the UI's PREFECT_UI_API_URL names
    cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with process(cmd, log, env) as proc:
        url = f"http://127.0.0.1:{port}/api"
        wait_http(f"{url}/health", proc, log)
        yield url


def wait_for_deployment(env: dict[str, str], name: str, timeout: float = 120) -> None:
    """Until the Prefect API at env's PREFECT_API_URL lists deployment `name` (a served flow
    registers it asynchronously). Asked over HTTP: a `prefect deployment ls` a second costs
    a Python start-up each."""
    request = urllib.request.Request(
        f"{env['PREFECT_API_URL']}/deployments/filter",
        data=b"{}",
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(request, timeout=5) as response:
                if name in {d["name"] for d in json.load(response)}:
                    return
        time.sleep(0.5)
    raise TimeoutError(f"deployment {name} never appeared")


def made_once(db: Path, make: Callable[[Path], Path]) -> Path:
    """`db`, made by the first of pytest-xdist's workers to ask, the others waiting on its lock:
    `make(folder)` builds it in `folder` (beside `db`) and returns the file it built."""
    db.parent.mkdir(parents=True, exist_ok=True)
    with (db.parent / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not db.exists():
            build = db.parent / "build"
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir()
            make(build).rename(db)
    return db


def migrated_prefect_db(folder: Path) -> Path:
    """A Prefect database migrated once (`prefect server database upgrade`) in `folder`, which
    pytest-xdist's workers share (`made_once`). A server's first start on a new database
    spends ~16 CPU-s on the migrations."""

    def make(build: Path) -> Path:
        env = {k: v for k, v in os.environ.items() if "DATABASE_CONNECTION_URL" not in k} | {"PREFECT_HOME": str(build)}
        out = subprocess.run(
            [str(BIN / "prefect"), "server", "database", "upgrade", "-y"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        return build / "prefect.db"

    return made_once(folder / "prefect-template" / "prefect.db", make)


def prefect_home(home: Path, template: Path) -> str:
    """`home` as a `PREFECT_HOME` whose database is a copy of `template` (`migrated_prefect_db`)."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copy(template, home / "prefect.db")
    return str(home)


def migrated_mlflow_db(folder: Path) -> Path:
    """An MLflow sqlite database migrated once (what `mlflow db upgrade URL` makes of a new one)
    in `folder`, shared by pytest-xdist's workers (`made_once`). A new store's first open
    spends ~0.85 CPU-s on MLflow's alembic migrations (~1.6 in a process's first, ~1-1.5
    inside a server); a copy of this one opens in ~0.04. It holds no experiment yet: a copy's
    first open adds the Default experiment (0), with that store's artifact root (a client's
    ./mlruns, a server's mlflow-artifacts:/), exactly as a new store's does."""

    def make(build: Path) -> Path:
        # In this process, which imported MLflow already: a `mlflow db upgrade` process would
        # cost ~2.5 CPU-s more (its start-up and MLflow's import).
        from mlflow.db import upgrade

        upgrade.callback(f"sqlite:///{build / 'mlflow.db'}")
        return build / "mlflow.db"

    return made_once(folder / "mlflow-template" / "mlflow.db", make)


def mlflow_store(path: Path, template: Path) -> str:
    """`sqlite:///path`, a store whose database is a copy of `template` (`migrated_mlflow_db`)
    unless `path` exists already."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        shutil.copy(template, path)
    return f"sqlite:///{path}"


def prefect_api(api: str, path: str, body: dict) -> list | dict:
    """POST `body` to the Prefect API at `api` (`.../api`) and return its JSON answer."""
    request = urllib.request.Request(
        f"{api}{path}", data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)
