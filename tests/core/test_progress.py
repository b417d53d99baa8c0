"""Progress lines: durations and the time left at the pace seen so far."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.progress import Rate, duration


@pytest.mark.parametrize(
    "seconds, text",
    [
        (0, "0s"),
        (0.4, "0s"),
        (59.4, "59s"),
        (60, "1m00s"),
        (185, "3m05s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (3725, "1h02m"),
        (-3, "0s"),
    ],
)
def test_duration(seconds, text):
    assert duration(seconds) == text


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# Seconds per unit in 1/1024 steps: the clock's readings and the pace derived from them are
# then exact floats. With any float (1.1 s over 105 units) the pace read back can land on the
# other side of a half second from the one the test chose, and the ETA rounds the other way.
@given(
    total=st.integers(1, 10_000),
    first=st.integers(0, 10_000),
    per_unit=st.integers(1, 100 * 1024).map(lambda n: n / 1024),
)
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
