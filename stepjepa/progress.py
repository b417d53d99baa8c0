"""Progress lines with an ETA, for logs that a sweep forwards to its console.

A sweep reads its runs' logs, not their terminals (tqdm's bars redraw in place and say
nothing in a file), so training and evaluation also log `step 40/150 ... eta=1m05s` and
`evaluate validation 64/200 ... eta=12s` lines; `stepjepa.training.launch.PROGRESS` picks them up.
"""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """`45s`, `3m05s`, `1h02m`: short enough for a log line, exact enough for planning."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Rate:
    """Time left for `total` units at the pace seen since this object was made; the units
    done before it (a resumed run's steps) do not count towards the pace."""

    def __init__(self, total: int, done: int = 0, clock=time.monotonic):
        self.total, self.first, self.clock = total, done, clock
        self.started = clock()

    def eta(self, done: int) -> str:
        if done >= self.total:
            return duration(0)
        if done <= self.first:
            return "?"
        per_unit = (self.clock() - self.started) / (done - self.first)
        return duration(per_unit * (self.total - done))
