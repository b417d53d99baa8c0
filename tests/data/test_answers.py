"""Answer extraction and numeric comparison on tricky completions (stepjepa/data/answers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.data.answers import (
    Extraction,
    extract,
    extract_boxed,
    extract_hash,
    extract_last_number,
    format_number,
    parse_gold,
    to_number,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "boxed"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{3} first, then \boxed{5}", "5"),  # the last box wins
        (r"\boxed{5} and a truncated \boxed{6", "5"),  # an unclosed box is skipped
        (r"\boxed{\{1\}}", r"\{1\}"),  # escaped braces do not count
        (r"\boxed {42}", "42"),
        ("no box here", None),
    ],
)
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize(
    ("text", "strict", "strict_value", "flexible_value"),
    [
        (r"Half of it: \boxed{\frac{1}{2}}", r"\frac{1}{2}", Fraction(1, 2), Fraction(1, 2)),
        (r"\boxed{\dfrac{3}{4}}", r"\dfrac{3}{4}", Fraction(3, 4), Fraction(3, 4)),
        (r"Try \boxed{10}. No wait, \boxed{12}", "12", 12, 12),
        ("The total is 1,000.", None, None, 1000),
        (r"\boxed{\$1,000.00}", r"\$1,000.00", 1000, 1000),
        ("She paid $1,000.00 in total", None, None, 1000),
        ("The temperature is -3 degrees.", None, None, -3),
        (r"\boxed{-3}", "-3", -3, -3),
        ("5-3=2", None, None, 2),  # a minus between numbers is not a sign
        ("It weighs 0.5 kg", None, None, Fraction(1, 2)),
        ("It weighs .5 kg", None, None, Fraction(1, 2)),
        (r"\boxed{18 \text{ dollars}}", r"18 \text{ dollars}", 18, 18),
        (r"\boxed{18 dollars}", "18 dollars", 18, 18),
        ("She makes 18 dollars per day.", None, None, 18),
        (r"\boxed{50\%}", r"50\%", 50, 50),
        (r"\boxed{1{,}000}", r"1{,}000", 1000, 1000),
        (r"\boxed{x = 5}", "x = 5", 5, 5),
        (r"\boxed{\sqrt{16}}", r"\sqrt{16}", 4, 4),
        ("I do not know the answer.", None, None, None),
        (r"\boxed{}", None, None, None),
        (r"the answer is \boxed{x} with 7 left", "x", None, 7),  # lenient falls back
        ("Some text #### 42 apples and then 7 more", "42", 42, 42),  # first `####` number
        ("#### $1,000\nmore text 3", "$1,000", 1000, 1000),
        (r"#### 7 but finally \boxed{8}", "8", 8, 8),  # a box beats `####`
    ],
)
def test_extract_rules(text, strict, strict_value, flexible_value):
    found = extract(text)
    assert found.strict == strict
    assert found.strict_value == strict_value
    assert found.flexible_value == flexible_value


def test_hash_needs_a_number_like_lm_eval_strict_match():
    assert extract_hash("#### The answer is 18") is None
    assert extract_hash("#### -3") == "-3"


def test_last_number_ignores_a_trailing_full_stop():
    assert extract_last_number("so 1,000.") == "1,000"
    assert extract_last_number("none") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1,000", 1000),
        ("$5", 5),
        ("5.00", 5),
        ("-3", -3),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("\u22124", -4),
        ("3 apples and 4 pears", None),
    ],
)
def test_to_number(text, value):
    assert to_number(text) == value


@pytest.mark.parametrize(
    ("answer", "value"),
    [("72", 72), ("1,000", 1000), ("He has 3+4=<<3+4=7>>7 apples.\n#### 7", 7), ("#### -3", -3), ("$5", 5)],
)
def test_parse_gold(answer, value):
    assert parse_gold(answer) == value


def test_parse_gold_rejects_text():
    with pytest.raises(ValueError, match="not a number"):
        parse_gold("#### seven")


def test_latex_parsing_works_off_the_main_thread():
    # math-verify's default timeout uses signal.alarm, which fails in worker threads.
    results = []
    worker = threading.Thread(target=lambda: results.append(to_number(r"\frac{3}{2}")))
    worker.start()
    worker.join()
    assert results == [Fraction(3, 2)]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Fraction(1000), "1000"),
        (Fraction(1, 2), "0.5"),
        (Fraction(-5, 4), "-1.25"),
        (Fraction(1, 3), "1/3"),
        (None, None),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


@given(st.integers(-(10**7), 10**7))
def test_formatted_integers_round_trip(n):
    assert extract(f"so the answer is \\boxed{{{n:,}}}").strict_value == n
    assert extract(f"she pays ${n:,}.").flexible_value == n


# ---- degenerate completions: never a hang, never an abort (issue 19) ----------------


def extract_in_child(text: str, timeout_s: float = 60) -> dict:
    """`extract(text)` in a child process, so that a hang fails the test instead of the session."""
    code = (
        "import json, sys; from stepjepa.data.answers import extract, format_number; f = extract(sys.stdin.read()); "
        "print(json.dumps({'strict': format_number(f.strict_value), 'flexible': format_number(f.flexible_value), "
        "'unscorable': getattr(f, 'unscorable', None)}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=text,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    "text",
    [
        r"so \boxed{10^{10^{10}}}",  # a sympy power no timeout could stop
        r"\boxed{9^{9^{9^{9}}}}",
        r"\boxed{10^{5000}}",  # over Python's 4,300-digit int-to-string limit
        r"\boxed{9^{9^{5}}}",
        "The answer is 3." + "3" * 4400,  # a plain number of 4,400 digits
        r"\boxed{3." + "3" * 4400 + "}",
    ],
)
@pytest.mark.cli
def test_absurd_numbers_are_no_answer_not_a_hang(text):
    started = time.monotonic()
    found = extract_in_child(text, timeout_s=60)
    assert time.monotonic() - started < 30
    assert found == {"strict": None, "flexible": None, "unscorable": True}


@pytest.mark.parametrize("text", [r"\boxed{999!}", r"\boxed{\binom{1000}{500}}", r"\boxed{(10^{999})^{999}}"])
def test_absurd_values_computed_by_math_verify_are_unscorable(text):
    assert extract(text) == Extraction(None, None, None, None, unscorable=True)


@pytest.mark.cli
@pytest.mark.parametrize("n", [2_000, 20_000])
def test_unclosed_boxes_take_linear_time(n):
    started = time.monotonic()
    found = extract_in_child(r"\boxed{7} then " + r"\boxed{" * n, timeout_s=60)
    assert found["strict"] == "7"
    assert time.monotonic() - started < 15  # was 19 s for 2,000 and > 300 s for 20,000


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{1" + " " * 20_000 + "x!}",  # two `\s*` around an optional `%` backtracked quadratically
        "It is 1" + ",11" * 30_000 + "x",  # a failed lakh grouping retried at every digit: 82 s
        "1" + ",111" * 30_000 + "1",
        "1" + " 111" * 30_000 + "x",
    ],
)
def test_long_runs_take_linear_time(text):
    started = time.monotonic()
    extract(text)
    assert time.monotonic() - started < 1.0


def test_slow_latex_runs_out_of_its_budget(monkeypatch):
    """A box math-verify needs long for is killed at the budget and counted as unscorable."""
    from stepjepa.data import latex_value

    monkeypatch.setattr(latex_value, "absurd", lambda latex: False)  # let a tower reach the worker
    started = time.monotonic()
    found = extract(r"\boxed{7^{7^{7^{7}}}} #### 12", budget_s=1.0)
    assert time.monotonic() - started < 10
    assert found == Extraction(None, None, None, None, unscorable=True)
    assert extract(r"\boxed{\frac{3}{4}}").strict_value == Fraction(3, 4)  # a fresh worker serves the next box


# ---- answer classes a teacher would accept (issue 19) -------------------------------


@pytest.mark.parametrize(
    ("text", "strict_value", "flexible_value"),
    [
        # strict: "The final answer is N" is lm-eval's CoT strict pattern
        ("The final answer is 42. I hope that helps, 7 times over.", 42, 42),
        ("So the final answer is: $1,200 and then 5 more words 3", 1200, 1200),
        ("the final answer is 3 * 4 = 12", None, 12),  # the marker's number must end the expression
        # flexible only: "The answer is N" followed by more text
        ("The answer is 18. Check: 9 * 2 = 18, and 3 left.", None, 18),
        ("So the answer is **25**. We used 5 boxes.", None, 25),
        # a later `####` line corrects an earlier one: strict keeps lm-eval's first, flexible the last
        ("#### 5\nWait, I made an error.\n#### 7", 5, 7),
        # a box without a number does not hide a `####` line
        ("\\boxed{\\text{see above}}\n#### 72", 72, 72),
        ("\\boxed{\\text{see above}} and 3 + 4 = 7", None, 7),
        # thousands grouped by spaces, thin spaces, LaTeX `\,` and `{,}`, Indian grouping
        ("The total is 25 000 dollars.", None, 25000),
        ("\\boxed{25 000}", 25000, 25000),
        ("\\boxed{276\\,000}", 276000, 276000),
        ("#### 276\\,000", 276000, 276000),
        ("she pays $276\\,000$ in all", None, 276000),
        ("\\boxed{114{,}200}", 114200, 114200),
        ("so it is 114{,}200 in total", None, 114200),
        ("#### 1,14,200", 114200, 114200),
        ("It costs 1,14,200 rupees.", None, 114200),
        ("\\boxed{25\u2009000}", 25000, 25000),
        ("The total is 25\u202f000.", None, 25000),
        # a Unicode minus
        ("\\boxed{\u22125}", -5, -5),
        ("#### \u22125", -5, -5),
        ("The temperature falls to \u22125 degrees.", None, -5),
        ("The final answer is \u221212.", -12, -12),
    ],
)
def test_answer_classes(text, strict_value, flexible_value):
    found = extract(text)
    assert (found.strict_value, found.flexible_value) == (strict_value, flexible_value), found


def test_flexible_still_takes_the_last_number_without_markers():
    assert extract("3 + 4 = 7, then 7 * 2 = 14 apples").flexible_value == 14
    assert extract("25 000 and 3").flexible_value == 3
