"""Exclusive ownership of a file-system resource across processes: a run folder, a store.

    with hold(out / ".lock", what=f"run folder {out}"):
        ...  # only this process writes the run

An `flock` on an open file: the kernel drops it when its holder exits, however it exits
(kill -9 included), so a lock never outlives its process and needs no clean-up. The lock
file stays; it names the holder's pid for whoever is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path


class Locked(RuntimeError):
    """Another live process holds the lock; the message names it."""


@contextlib.contextmanager
def hold(path: str | Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on `path` for the `with` block.

    Waits up to `wait` seconds (0: refuse at once, `float("inf")`: until free), then
    raises `Locked` naming `what` and the holder's pid.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                    raise Locked(
                        f"{what} is in use by another process (pid {holder}, lock {path}); "
                        "wait for it to finish or stop it"
                    ) from None
                time.sleep(min(0.2, max(deadline - time.monotonic(), 0.01)))
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
