"""GSM8K answer extraction and numeric comparison, shared by `evaluate` and `score`.

Two named rules, reported as separate metrics (a lenient metric is never passed off as
the official one). Each takes the first of its sources that has a numeric value:

- **strict**: the *last* complete `\\boxed{...}` (nested braces counted, so
  `\\boxed{\\frac{1}{2}}` works); else the number after the *first* `####` (the
  lm-evaluation-harness `strict-match` regex `#### (\\-?[0-9\\.\\,]+)`, loosened to allow
  `$` and any spacing); else the number after the first "The final answer is" (the strict
  pattern of lm-eval's chain-of-thought GSM8K variants). The box comes first because the
  training system prompt asks for it; a box with no number in it (`\\boxed{\\text{see
  above}}`) does not hide a `####` line.
- **flexible** (lenient): the last box; else the *last* `####` number (a later line that
  corrects an earlier one wins); else the last "answer is N" ("The answer is 18. Check:
  ..."); else the last number anywhere in the text (like lm-eval `flexible-extract`).

Numbers are read as completions write them: thousands grouped by `,`, a space, a thin or
no-break space, `\\,` or `{,}` ("25 000", "276\\,000", "114{,}200"), Indian grouping
("1,14,200"), an ASCII or Unicode minus. Values are compared as exact fractions, so
"1,000", "$1,000.00" and "1000" are equal, as are "5.00" and "5"; no float tolerance.

Extraction runs in linear time in the completion's length. A value of more than
`MAX_DIGITS` digits, or a LaTeX box that cannot be evaluated within the completion's
time budget, is no answer, and the completion is flagged `unscorable` (counted in the
metrics): one degenerate completion never hangs or aborts a whole evaluation.

Why hand regex *and* math-verify: GSM8K numbers ("1,000", "$5", "18 dollars", "50%")
follow the lm-eval normalisation exactly with one regex, and math-verify reads "1,2" as
a set and "18 dollars" as a product of symbols. LaTeX inside a box (`\\frac`, `\\sqrt{4}`,
`2^{3}`, `x = 5`) is what math-verify parses well, so a box that is not a plain number
goes to it (`stepjepa.data.latex_value`, time-bounded).
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import TypeVar

from stepjepa.data.latex_value import MAX_DIGITS, latex_value

T = TypeVar("T")

BUDGET_S = 2.0
"""Seconds one completion may spend in LaTeX evaluation before it counts as unscorable."""

# An integer part: `,` thousands, Indian lakh grouping, or thousands separated by a
# (thin, no-break) space, `\,` or `{,}`; `(?!\d)` keeps "1,0000" from reading as 1,000.
# At most 12 groups: a failed try costs its length at every digit of a run, so unbounded
# groups made "1,11,11,...x" quadratic; 36 digits are past any sane answer anyway.
_INT = (
    r"\d{1,3}(?:,\d{3}){1,12}(?!\d)|\d{1,2}(?:,\d{2}){1,12},\d{3}(?!\d)"
    r"|\d{1,3}(?:(?:[ \u00a0\u2009\u202f]|\\,|\{,\})\d{3}){1,12}(?!\d)|\d+"
)
# Optional sign (ASCII or Unicode minus, not glued to a preceding word/digit, so "5-3" is
# not "-3"), optional `$`, the integer part with optional decimals, or a bare ".5".
_NUMBER = r"(?:(?<![\w)])[-\u2212]\s?)?\$?\s?(?:(?:" + _INT + r")(?:\.\d+)?|\.\d+)"
NUMBER_RE = re.compile(_NUMBER)
_NUMBER_GROUP_RE = re.compile("(" + _NUMBER + ")")
_NUMBER_CHARS = frozenset("0123456789,.{}\\$-\u2212")  # with whitespace, all a number match may hold
# After a marker the number must end the expression: "The answer is 3 * 4 = 12" is not 3.
_ENDS = r"(?!\s*(?:[-+/=^\u00d7\u00b7\u2212]|\*(?!\*)|\\times|\\cdot|\\div))"  # `**` closes bold
# lm-eval strict-match, with `$` allowed: "#### $1,000" is common in GSM8K-style output.
HASH_RE = re.compile(r"####\s*(" + _NUMBER + r")")
# "answer is N"; the regex starts with a literal ("nswer") because that is 10x faster to
# scan for than a case-insensitive pattern; `_BEFORE_ANSWER_RE` checks the words before it.
ANSWER_IS_RE = re.compile(r"nswer\s+is[\s:*]*(" + _NUMBER + r")" + _ENDS)
_BEFORE_ANSWER_RE = re.compile(r"(?i:(\bthe\s+final\s+)?\ba)\Z")
# A whole answer text that is one number, optionally with `%` or unit words after it.
# (One `\s*` before the words: two around an optional `%` backtrack quadratically.)
_NUMBER_WITH_UNITS_RE = re.compile(r"(" + _NUMBER + r")\s*(?:%\s*)?[A-Za-z][A-Za-z .]*|(" + _NUMBER + r")\s*%?")
# `\frac{a}{b}` of plain numbers, the commonest LaTeX box: exact here, no math-verify round trip.
_PLAIN = r"\s*((?:" + _INT + r")(?:\.\d+)?|\.\d+)\s*"
_FRAC_RE = re.compile(r"([-\u2212]?)\s*\\[dt]?frac\s*\{" + _PLAIN + r"\}\s*\{" + _PLAIN + r"\}")
# LaTeX around a number that carries no value: `\$`, `\%`, spacing commands, and text
# wrappers such as `\text{ dollars}` (content kept).
_LATEX_NOISE_RE = re.compile(r"\\[$%!;: ]|\\,(?!\d)|\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")
# What matters for brace matching: a box opening, an escaped character, a brace.
_BRACE_TOKEN_RE = re.compile(r"\\boxed\s*\{|\\.|[{}]", re.DOTALL)


@dataclass(frozen=True)
class Extraction:
    """What each rule found in one completion: the text and its numeric value.

    `unscorable`: some answer text was absurd or ran out of time, and was taken as no answer.
    """

    strict: str | None
    strict_value: Fraction | None
    flexible: str | None
    flexible_value: Fraction | None
    unscorable: bool = False


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}`; `None` if there is none.

    Braces are counted (an escaped `\\{` does not count), so `\\boxed{\\frac{1}{2}}` gives
    `\\frac{1}{2}`. A box left open by a truncated generation is skipped in favour of an
    earlier complete one. One pass over the braces: linear in the text's length.
    """
    first = text.find("\\boxed")
    if first < 0:
        return None
    # Braces before the first box cannot close it; only an escaping backslash before it matters.
    start = first if first == 0 or text[first - 1] != "\\" else 0
    opened: list[int] = []  # per open brace: where its box content starts, or -1
    last: tuple[int, int] | None = None
    for token in _BRACE_TOKEN_RE.finditer(text, start):
        piece = token.group()
        if piece == "{" or piece.startswith("\\boxed"):
            opened.append(token.end() if piece != "{" else -1)
        elif piece == "}" and opened:
            start = opened.pop()
            if start >= 0 and (last is None or start > last[0]):
                last = (start, token.start())
    return text[last[0] : last[1]].strip() if last else None


def _last(items: Iterable[T]) -> T | None:
    """The last item of an iterator (None when empty), holding one item at a time."""
    tail = deque(items, maxlen=1)
    return tail[0] if tail else None


def _find(pattern: re.Pattern[str], text: str, which: str) -> str | None:
    """The group of the first or last match of `pattern`, stripped."""
    if which == "first":
        match = pattern.search(text)
    else:
        match = _last(pattern.finditer(text))
    return match.group(1).strip() if match else None


def extract_hash(text: str, which: str = "first") -> str | None:
    """The number after the first (or last) `####`, e.g. "#### $1,000" -> "$1,000"."""
    return _find(HASH_RE, text, which)


def _answer_is(text: str, final_only: bool):
    """Numbers after "answer is" (or only "the final answer is"), in order."""
    for match in ANSWER_IS_RE.finditer(text):
        before = _BEFORE_ANSWER_RE.search(text, max(0, match.start() - 40), match.start())
        if before and (before.group(1) or not final_only):
            yield match.group(1).strip()


def extract_final_answer(text: str) -> str | None:
    """The number after the first "The final answer is" (lm-eval CoT strict pattern)."""
    return next(_answer_is(text, final_only=True), None)


def extract_answer_is(text: str) -> str | None:
    """The number after the last "answer is" (lenient), e.g. "The answer is 18. Check: 2" -> "18"."""
    return _last(_answer_is(text, final_only=False))


def extract_last_number(text: str) -> str | None:
    """The last number in the text (lm-eval flexible-extract), e.g. "is 18 dollars." -> "18"."""
    # Scanning the whole text with the number regex is slow (it tries every position);
    # the last number is the match holding the last digit, and a match never leaves its
    # run of number characters, so matching that run alone finds the same one.
    last = max(map(text.rfind, "0123456789"))
    if last < 0:
        return None
    start = last
    while start > 0 and (text[start - 1] in _NUMBER_CHARS or text[start - 1].isspace()):
        start -= 1
    match = _last(_NUMBER_GROUP_RE.finditer(text, start, last + 1))
    return match.group(1).strip() if match else None


class _Reader:
    """Values of one completion's answer texts, sharing its time budget and `unscorable` flag."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s, self.unscorable = budget_s, False

    def value(self, text: str | None) -> Fraction | None:
        if text is None:
            return None
        value, gave_up = _value(text, self.budget_s)
        self.unscorable |= gave_up
        return value

    def first(self, *sources) -> tuple[str | None, Fraction | None]:
        """The first source (a text, or a function giving one) with a value; else the first text found."""
        first_text = None
        for source in sources:
            text = (source() if callable(source) else source) or None  # an empty box is no answer
            value = self.value(text)
            if value is not None:
                return text, value
            first_text = first_text if first_text is not None else text
        return first_text, None


def extract(text: str, budget_s: float = BUDGET_S) -> Extraction:
    """Apply both rules to a completion, spending at most about `budget_s` s on LaTeX."""
    reader = _Reader(budget_s)
    boxed = extract_boxed(text)
    strict, strict_value = reader.first(boxed, lambda: extract_hash(text), lambda: extract_final_answer(text))
    if boxed is not None and strict == boxed and strict_value is not None:
        flexible, flexible_value = strict, strict_value
    else:
        flexible, flexible_value = reader.first(
            lambda: extract_hash(text, "last"), lambda: extract_answer_is(text), lambda: extract_last_number(text)
        )
    if reader.unscorable:  # a degenerate completion: no answer at all, not a number picked out of it
        return Extraction(None, None, None, None, unscorable=True)
    return Extraction(strict, strict_value, flexible, flexible_value)


def to_number(text: str, budget_s: float = BUDGET_S) -> Fraction | None:
    """Exact value of an answer text; `None` if it has no single (sane) numeric value.

    "1,000" -> 1000, "$1,000.00" -> 1000, "18 dollars" -> 18, "50%" -> 50, ".5" -> 1/2,
    "\\frac{1}{2}" -> 1/2, "x = 5" -> 5, "3 apples and 4 pears" -> None.
    """
    return _value(text, budget_s)[0]


def _value(text: str, budget_s: float) -> tuple[Fraction | None, bool]:
    """(value or None, gave up?): plain numbers by regex, anything else by math-verify."""
    if text.isascii() and text.isdigit():  # most answers: skip the regexes (isdigit alone takes "²")
        value = _plain_value(text)
        return value, value is None
    cleaned = _LATEX_NOISE_RE.sub(_noise_replacement, text).strip().rstrip(".").strip()
    plain = _NUMBER_WITH_UNITS_RE.fullmatch(cleaned)
    if plain:
        value = _plain_value(plain.group(1) or plain.group(2))
        return value, value is None
    if not re.search(r"\d", text):  # "\text{see above}", "x": nothing to evaluate
        return None, False
    frac = _FRAC_RE.fullmatch(cleaned)
    if frac:
        numerator, denominator = _plain_value(frac.group(2)), _plain_value(frac.group(3))
        if numerator is None or denominator is None:
            return None, True
        return (-1 if frac.group(1) else 1) * numerator / denominator if denominator else None, False
    return latex_value(text, budget_s)


def _noise_replacement(match: re.Match[str]) -> str:
    # A text wrapper keeps its words (units are allowed after a number); every other piece
    # of noise (`\$`, `\%`, spacing) carries no value.
    return f" {match.group(1)} " if match.group(1) is not None else ""


@functools.lru_cache(maxsize=1 << 16)  # the same numbers recur in every evaluation
def _plain_value(number: str) -> Fraction | None:
    """A `NUMBER_RE` match as a fraction (separators, `$` and a Unicode minus removed);
    `None` when it has more than `MAX_DIGITS` digits."""
    digits = re.sub(r"[$,\s\\{}]", "", number).replace("\u2212", "-")
    if len(digits) > MAX_DIGITS + 2:
        return None
    return Fraction(digits)


@functools.lru_cache(maxsize=1 << 16)
def parse_gold(answer: str) -> Fraction:
    """Value of a GSM8K gold answer: the text after the last `####`, or the whole string.

    Raises `ValueError` naming the text when it is not a number.
    """
    tail = answer.rsplit("####", 1)[-1].strip()
    plain = _NUMBER_WITH_UNITS_RE.fullmatch(tail.rstrip(".").strip())
    value = _plain_value(plain.group(1) or plain.group(2)) if plain else None
    if value is None:
        raise ValueError(f"gold answer {tail[:60]!r} is not a number")
    return value


def format_number(value: Fraction | None) -> str | None:
    """Canonical text of a value for records: 1000 -> "1000", 1/2 -> "0.5", 1/3 -> "1/3"."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    denominator = value.denominator
    for factor in (2, 5):
        while denominator % factor == 0:
            denominator //= factor
    if denominator != 1:  # not a terminating decimal
        return f"{value.numerator}/{value.denominator}"
    digits = 0
    while (value * 10**digits).denominator != 1:
        digits += 1
    return f"{float(value):.{digits}f}" if digits <= 15 else str(value)
