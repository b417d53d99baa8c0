"""A test's stand-in for a process that `stepjepa.startup` started with the cyclic collector off."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import pytest

from stepjepa import startup


@contextlib.contextmanager
def paused_collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The collector off as `startup.pause` leaves it; yields the freezes `startup.resume` asked
    for, recorded instead of done (a freeze would hold this session's objects for good). The
    collector is on again afterwards, whatever the test did."""
    freezes: list[int] = []
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(1))
    gc.enable()
    startup.pause()
    try:
        yield freezes
    finally:
        monkeypatch.setattr(startup, "_paused", False)
        gc.enable()
