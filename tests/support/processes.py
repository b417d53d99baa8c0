"""Process checks for the fault tests: whether processes a killed run started are gone."""

from __future__ import annotations

import os
import signal
import time


def all_gone(pids: list[int], timeout: float = 30) -> bool:
    """True once none of `pids` is alive (zombies count as gone); after `timeout`, the
    survivors are killed so a failing test leaves nothing behind, and False is returned."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    for pid in alive:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    return False
