"""GSM8K answer extraction and numeric comparison, shared by `evaluate` and `score`.

Two named rules, reported as separate metrics (a lenient metric is never passed off as
the official one):

- **strict**: the content of the *last* complete `\\boxed{...}` (nested braces counted,
  so `\\boxed{\\frac{1}{2}}` works), else the number after the first `####` (the
  lm-evaluation-harness `strict-match` regex `#### (\\-?[0-9\\.\\,]+)`, first match,
  loosened to allow `$` and any spacing). The box comes first because the training
  system prompt asks for it.
- **flexible** (lenient): the strict answer when it has a numeric value, else the last
  number anywhere in the text (like lm-evaluation-harness `flexible-extract`).

Values are compared as exact fractions after normalisation, so "1,000", "$1,000.00" and
"1000" are equal, as are "5.00" and "5", "0.5" and ".5"; there is no float tolerance.

Why hand regex *and* math-verify: GSM8K numbers ("1,000", "$5", "18 dollars", "50%")
follow the lm-eval normalisation (drop `,` and `$`, a trailing `.`) exactly with one
regex, and math-verify reads "1,2" as a set and "18 dollars" as a product of symbols.
LaTeX inside a box (`\\frac`, `\\dfrac`, `\\sqrt{4}`, `2^{3}`, `x = 5`, `\\text{ units}`)
is what math-verify parses well, so a box that is not a plain number goes to it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from fractions import Fraction

# A number as GSM8K completions write it: optional sign (ASCII or Unicode minus, not
# glued to a preceding word/digit, so "5-3" is not "-3"), optional `$`, digits with
# optional thousands commas, optional decimals, or a bare ".5".
_NUMBER = (
    r"(?:(?<![\w)])[-\u2212]\s?)?\$?\s?"
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"
)
NUMBER_RE = re.compile(_NUMBER)
# lm-eval strict-match, with `$` allowed: "#### $1,000" is common in GSM8K-style output.
HASH_RE = re.compile(r"####\s*(" + _NUMBER + r")")
# A whole answer text that is one number, optionally with `%` or unit words after it.
_NUMBER_WITH_UNITS_RE = re.compile(r"(" + _NUMBER + r")\s*%?\s*[A-Za-z][A-Za-z .]*|(" + _NUMBER + r")\s*%?")
# LaTeX around a number that carries no value: `\$`, `\%`, spacing commands, `{,}`
# thousands separators, and text wrappers such as `\text{ dollars}` (content kept).
_LATEX_NOISE_RE = re.compile(r"\\[$%!,;: ]|\{,\}|\\(?:text|mathrm|textbf|mbox)\{([^{}]*)\}")


@dataclass(frozen=True)
class Extraction:
    """What each rule found in one completion: the text and its numeric value."""

    strict: str | None
    strict_value: Fraction | None
    flexible: str | None
    flexible_value: Fraction | None


def extract_boxed(text: str) -> str | None:
    """Content of the last complete `\\boxed{...}`; `None` if there is none.

    Braces are counted (an escaped `\\{` does not count), so
    `\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`. A box left open by a truncated
    generation is skipped in favour of an earlier complete one.
    """
    for match in reversed(list(re.finditer(r"\\boxed\s*\{", text))):
        content = _balanced(text, match.end())
        if content is not None:
            return content.strip()
    return None


def _balanced(text: str, start: int) -> str | None:
    """The text from `start` up to the brace closing the one just before `start`."""
    depth, i = 1, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # skip the escaped character, e.g. `\{`
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[start:i]
        i += 1
    return None


def extract_hash(text: str) -> str | None:
    """The number after the first `####` (lm-eval strict-match), e.g. "#### $1,000" -> "$1,000"."""
    match = HASH_RE.search(text)
    return match.group(1).strip() if match else None


def extract_last_number(text: str) -> str | None:
    """The last number in the text (lm-eval flexible-extract), e.g. "is 18 dollars." -> "18"."""
    matches = NUMBER_RE.findall(text)
    return matches[-1].strip() if matches else None


def extract_strict(text: str) -> str | None:
    """Strict answer text: the last box, else the first `####` number."""
    boxed = extract_boxed(text)
    return boxed if boxed else extract_hash(text)


def extract(text: str) -> Extraction:
    """Apply both rules to a completion."""
    strict = extract_strict(text)
    strict_value = to_number(strict) if strict is not None else None
    if strict_value is not None:
        flexible, flexible_value = strict, strict_value
    else:
        flexible = extract_last_number(text)
        flexible_value = to_number(flexible) if flexible is not None else None
    return Extraction(strict, strict_value, flexible, flexible_value)


def to_number(text: str) -> Fraction | None:
    """Exact value of an answer text; `None` if it has no single numeric value.

    "1,000" -> 1000, "$1,000.00" -> 1000, "18 dollars" -> 18, "50%" -> 50, ".5" -> 1/2,
    "\\frac{1}{2}" -> 1/2, "x = 5" -> 5, "3 apples and 4 pears" -> None.
    """
    cleaned = _LATEX_NOISE_RE.sub(_noise_replacement, text).strip().rstrip(".").strip()
    plain = _NUMBER_WITH_UNITS_RE.fullmatch(cleaned)
    if plain:
        return _plain_value(plain.group(1) or plain.group(2))
    return _latex_value(text)


def _noise_replacement(match: re.Match[str]) -> str:
    # `{,}` and a `\,` thin space both separate thousands in LaTeX ("1{,}000", "1\,000");
    # a text wrapper keeps its words (units are allowed after a number); every other
    # piece of noise (`\$`, `\%`, spacing) carries no value.
    token = match.group(0)
    if token == "{,}" or (token == "\\," and match.string[match.end() : match.end() + 3].isdigit()):
        return ","
    return f" {match.group(1)} " if match.group(1) is not None else ""


def _plain_value(number: str) -> Fraction:
    """A `NUMBER_RE` match as a fraction, after removing `$`, `,`, spaces and a Unicode minus."""
    digits = re.sub(r"[$,\s]", "", number).replace("\u2212", "-")
    return Fraction(digits)


def _latex_value(text: str) -> Fraction | None:
    """Value of a LaTeX expression via math-verify (`\\frac`, `\\sqrt`, `x = 5`, ...)."""
    # Imported here: it pulls in sympy (~0.5 s), needed only for boxes that are not
    # plain numbers.
    from math_verify import LatexExtractionConfig, parse

    # math-verify's timeout uses signal.alarm, which only works on the main thread
    # (Prefect tasks run in worker threads): there, parse without a timeout.
    on_main = threading.current_thread() is threading.main_thread()
    results = parse(
        f"${text}$", extraction_config=[LatexExtractionConfig()], parsing_timeout=5 if on_main else None
    )
    return _sympy_value(results[0]) if results else None


def _sympy_value(expr: object) -> Fraction | None:
    """A real sympy number as an exact fraction (floats through their decimal text)."""
    import sympy

    if isinstance(expr, sympy.Equality):  # "x = 5" answers 5
        expr = expr.rhs
    if not isinstance(expr, sympy.Basic) or not expr.is_number:
        return None
    value = expr.doit()
    if value.is_Rational:
        return Fraction(int(value.p), int(value.q))
    if value.is_real and value.is_finite:
        return Fraction(str(sympy.N(value, 20)))
    return None


def parse_gold(answer: str) -> Fraction:
    """Value of a GSM8K gold answer: the text after the last `####`, or the whole string.

    Raises `ValueError` naming the text when it is not a number.
    """
    tail = answer.rsplit("####", 1)[-1].strip()
    plain = _NUMBER_WITH_UNITS_RE.fullmatch(tail.rstrip(".").strip())
    if not plain:
        raise ValueError(f"gold answer {tail[:60]!r} is not a number")
    return _plain_value(plain.group(1) or plain.group(2))


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
