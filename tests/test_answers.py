"""Answer extraction and numeric comparison on tricky completions (stepjepa/answers.py)."""

from __future__ import annotations

import threading
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.answers import (
    extract,
    extract_boxed,
    extract_hash,
    extract_last_number,
    format_number,
    parse_gold,
    to_number,
)


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
    [("1,000", 1000), ("$5", 5), ("5.00", 5), ("-3", -3), ("0.5", Fraction(1, 2)), (".5", Fraction(1, 2)),
     ("\u22124", -4), ("3 apples and 4 pears", None)],
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
    [(Fraction(1000), "1000"), (Fraction(1, 2), "0.5"), (Fraction(-5, 4), "-1.25"), (Fraction(1, 3), "1/3"), (None, None)],
)
def test_format_number(value, text):
    assert format_number(value) == text


@given(st.integers(-10**7, 10**7))
def test_formatted_integers_round_trip(n):
    assert extract(f"so the answer is \\boxed{{{n:,}}}").strict_value == n
    assert extract(f"she pays ${n:,}.").flexible_value == n
