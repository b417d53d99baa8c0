"""Fuzzing the scorer: random and adversarial completions never raise, never take a
second, and box extraction agrees with a plainly quadratic reference (issue 19)."""

from __future__ import annotations

import re
import time
from fractions import Fraction

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepjepa.data import latex_value
from stepjepa.data.answers import extract_boxed, to_number
from stepjepa.evaluation.score import score_completion

# Pieces degenerate generations are made of: boxes open and closed, LaTeX towers and
# factorials, huge digit runs, markers, separators, odd spaces and minus signs.
FRAGMENTS = [
    "\\boxed{",
    "\\boxed {",
    "{",
    "}",
    "\\",
    "\\\\",
    "\\{",
    "\\}",
    "####",
    "#### ",
    "The final answer is ",
    "The answer is ",
    "answer is: ",
    "\\frac{",
    "\\sqrt{",
    "\\text{",
    "^",
    "^{",
    "10^{",
    "9^{9^{",
    "!",
    "1000!",
    "\\,",
    "{,}",
    ",",
    ".",
    " ",
    "\n",
    "\u2009",
    "\u202f",
    "\u2212",
    "-",
    "$",
    "%",
    "=",
    "x",
    "dollars",
    "0",
    "7",
    "42",
    "1,000",
    "1,14,200",
    "25 000",
    "3.5",
    "9" * 200,
    "\u00b2",
    "\u0663",
    "\u00bd",
    "\uff17",
    ",11",
    ",111",
    " 111",
    "x!",
    "%",
]
adversarial = st.lists(
    st.one_of(
        st.sampled_from(FRAGMENTS),
        st.text(max_size=4),
        st.builds(lambda piece, n: piece * n, st.sampled_from(FRAGMENTS), st.integers(1, 3000)),
    ),
    max_size=12,
).map("".join)
completions = st.one_of(st.text(max_size=300), adversarial)


def setup_module() -> None:
    assert to_number(r"\sqrt{4}") == 2  # start the LaTeX worker once, outside any example's time


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(completions)
def test_scoring_never_fails_and_stays_under_a_second(completion):
    # A worker killed at a budget is restarted; waiting for that start-up (sympy's import,
    # ~1-3 s on a loaded machine) is a one-off cost of the process, not of the example.
    started, start_waits = time.monotonic(), latex_value._WORKER.start_wait_s
    row = score_completion(completion, Fraction(7), budget_s=0.5)
    elapsed = time.monotonic() - started - (latex_value._WORKER.start_wait_s - start_waits)
    assert elapsed < 1.0, f"{elapsed:.2f} s for {completion[:200]!r}"
    for rule in ("strict", "flexible"):
        value = row[f"value_{rule}"]
        assert value is None or len(value) < 250  # no absurd number survives
        assert row[f"correct_{rule}"] == (value == "7")
        assert value is None or row[f"extracted_{rule}"] is not None


def reference_boxed(text: str) -> str | None:
    """The last complete box, found the slow obvious way: try every unescaped `\\boxed{`
    (an even run of backslashes before it) from the last, count braces to its end."""
    for match in reversed(list(re.finditer(r"\\boxed\s*\{", text))):
        run = len(text[: match.start()]) - len(text[: match.start()].rstrip("\\"))
        if run % 2:
            continue
        depth, i = 1, match.end()
        while i < len(text):
            if text[i] == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[match.end() : i].strip()
            i += 1
    return None


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "\\boxed {", "{", "}", "\\", "a", "1", " "]), max_size=30).map("".join))
def test_boxed_matches_the_quadratic_reference(text):
    assert extract_boxed(text) == reference_boxed(text)
