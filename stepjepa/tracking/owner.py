"""Which process writes a run, as run tags: whoever finds the run RUNNING later can tell
whether its owner still goes on or died without ending it (kill -9, a lost machine)."""

from __future__ import annotations

import os

OWNER_HOST, OWNER_PID, OWNER_STARTED = "stepjepa.owner.host", "stepjepa.owner.pid", "stepjepa.owner.started"


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The process that writes a run (host, pid and its start time) as run tags: whoever finds
    the run RUNNING later can tell whether it still goes on. The start time tells a reused pid."""
    import socket

    import psutil

    pid = pid or os.getpid()
    return {
        OWNER_HOST: socket.gethostname(),
        OWNER_PID: str(pid),
        OWNER_STARTED: f"{psutil.Process(pid).create_time():.2f}",
    }


def owner_gone(tags: dict[str, str], host: str | None = None) -> str | None:
    """Why the owner named by `tags` (`owner_tags`) is provably gone, or None when it may live:
    it runs, it runs on another host (nothing here can tell), or no owner is named."""
    import socket

    import psutil

    host = host or socket.gethostname()
    pid = tags.get(OWNER_PID)
    if not pid or tags.get(OWNER_HOST) != host:
        return None
    try:
        process = psutil.Process(int(pid))
        started, zombie = f"{process.create_time():.2f}", process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return f"owner pid {pid} on {host} gone"
    if zombie:
        return f"owner pid {pid} on {host} gone (exited, not yet reaped)"
    if tags.get(OWNER_STARTED) not in (None, started):
        return f"owner pid {pid} on {host} gone (the pid now belongs to a later process)"
    return None
