"""Per-test CPU, for benchmarks/test_suite_profile.py: with STEPJEPA_TEST_CPU_LOG=DIR set,
every test's wall seconds and CPU seconds (this process and the children it reaped:
servers, training runs, CLI processes) are appended to DIR/<worker>.jsonl.

The suite is bound by its CPU on two cores, so what a module costs is its CPU, not its wall
time: a test that waits on a server's restart is cheap beside three workers, one that starts
ten Python processes is not. Off unless asked for: the suite itself never reads these files.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import pytest


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    folder = os.environ.get("STEPJEPA_TEST_CPU_LOG")
    if not folder:
        yield
        return
    started, wall, (own, children) = time.time(), time.monotonic(), _cpu()
    yield  # setup, call and teardown: a module fixture's teardown is its last test's
    own_after, children_after = _cpu()
    row = {
        "nodeid": item.nodeid,
        "module": item.nodeid.split("::")[0],
        "start": round(started, 3),  # epoch seconds: beside a sampler of the machine's idle time
        "wall": round(time.monotonic() - wall, 3),
        "cpu_self": round(own_after - own, 3),
        "cpu_children": round(children_after - children, 3),
    }
    Path(folder).mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with (Path(folder) / f"{worker}.jsonl").open("a") as fh:
        fh.write(json.dumps(row) + "\n")
