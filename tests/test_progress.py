"""Progress lines: durations and the time left at the pace seen so far."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.progress import Rate, duration


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (0.4, "0s"), (59.4, "59s"), (60, "1m00s"), (185, "3m05s"),
                                           (3599, "59m59s"), (3600, "1h00m"), (3725, "1h02m"), (-3, "0s")])
def test_duration(seconds, text):
    assert duration(seconds) == text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@given(total=st.integers(1, 10_000), first=st.integers(0, 10_000), per_unit=st.floats(0.001, 100))
def test_eta_is_the_pace_since_start_times_what_is_left(total, first, per_unit):
    first = min(first, total)
    clock = Clock()
    rate = Rate(total, first, clock=clock)
    assert rate.eta(first) == ("0s" if first >= total else "?")  # no pace seen yet
    for done in sorted({first + 1, (first + total) // 2 + 1, total}):
        if done > total or done <= first:
            continue
        clock.now = 100.0 + per_unit * (done - first)
        assert rate.eta(done) == duration(per_unit * (total - done))
