"""Score GSM8K completions against gold answers; `stepjepa score FILE.jsonl` re-scores saved ones.

Each line of FILE is a JSON object with `completion` (the model's text) and `answer` (a
GSM8K gold answer: `72`, `1,000`, or a full solution ending in `#### 72`). The
`predictions.jsonl` that `stepjepa evaluate` writes is such a file. Prints one JSON
object with the metrics (`n`, `accuracy_strict`, `accuracy_flexible`, `unscorable`, ...).
FILE `-` reads stdin; a bad line is an error naming it (exit status 2).

    stepjepa score outputs/eval/predictions.jsonl

`score_completion` and `summarize` are the library functions `evaluate` uses too, so a
re-score gives exactly the numbers of the run that wrote the file. No model, no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

from stepjepa.data.answers import BUDGET_S, extract, format_number, parse_gold
from stepjepa.inputs import InputError, read_jsonl

log = logging.getLogger(__name__)


def score_completion(completion: str, gold: Fraction, budget_s: float = BUDGET_S) -> dict[str, Any]:
    """Extract both answers from a completion and compare them with the gold value.

    Returns JSON-ready fields: `extracted_*` (the text each rule found, or None),
    `value_*` (its canonical number, or None), `correct_*`, `gold` (canonical), and
    `unscorable` (an answer text was absurd or out of its `budget_s`: no answer).
    """
    found = extract(completion, budget_s)
    return {
        "gold": format_number(gold),
        "extracted_strict": found.strict,
        "value_strict": format_number(found.strict_value),
        "correct_strict": found.strict_value == gold,
        "extracted_flexible": found.flexible,
        "value_flexible": format_number(found.flexible_value),
        "correct_flexible": found.flexible_value == gold,
        "unscorable": found.unscorable,
    }


def summarize(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of scored rows (each has `completion` and the fields of `score_completion`).

    `accuracy_strict` is the box/`####` rule, `accuracy_flexible` the lenient one;
    `no_answer_*` count completions where the rule found nothing at all; `unscorable`
    those where an absurd or too slow answer text was taken as no answer.
    """
    rows = list(rows)
    if not rows:
        raise InputError("no examples to score")
    n = len(rows)
    correct_strict = sum(r["correct_strict"] for r in rows)
    correct_flexible = sum(r["correct_flexible"] for r in rows)
    unscorable = sum(bool(r.get("unscorable")) for r in rows)
    if unscorable:
        log.warning(
            "%d of %d completions held an absurd number or LaTeX that ran out of time: scored as "
            "no answer (metric `unscorable`)",
            unscorable,
            n,
        )
    return {
        "n": n,
        "accuracy_strict": correct_strict / n,
        "accuracy_flexible": correct_flexible / n,
        "correct_strict": correct_strict,
        "correct_flexible": correct_flexible,
        "no_answer_strict": sum(r["extracted_strict"] is None for r in rows),
        "no_answer_flexible": sum(r["extracted_flexible"] is None for r in rows),
        "unscorable": unscorable,
        "mean_completion_chars": sum(len(r["completion"]) for r in rows) / n,
    }


def text_field(record: dict[str, Any], field: str, where: str, numbers_ok: bool = False) -> str:
    """`record[field]` as a string; a missing or mistyped field is an `InputError` at `where`."""
    if field not in record:
        raise InputError(f"{where}: missing field {field!r} (fields: {', '.join(sorted(record)) or 'none'})")
    value = record[field]
    if numbers_ok and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise InputError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


def gold_value(record: dict[str, Any], field: str, where: str) -> Fraction:
    """Parsed gold answer of a record; an unparseable one is an `InputError` at `where`."""
    try:
        return parse_gold(text_field(record, field, where, numbers_ok=True))
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{where}: field {field!r}: {err}") from None


def score_file(path: str | Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Re-score a predictions file: (scored rows, metrics)."""
    rows = []
    for number, record in read_jsonl(path):
        where = f"{'<stdin>' if str(path) == '-' else path}:{number}"
        completion = text_field(record, "completion", where)
        gold = gold_value(record, "answer", where)
        rows.append({"completion": completion, **score_completion(completion, gold)})
    return rows, summarize(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stepjepa score", description=__doc__.split("\n\n")[0])
    parser.add_argument("file", help="JSONL with `completion` and `answer` per line (`-`: stdin)")
    parser.add_argument("--rows", type=Path, help="also write the re-scored rows to this JSONL file")
    args = parser.parse_args(argv)
    try:
        rows, metrics = score_file(args.file)
    except InputError as err:
        print(f"stepjepa score: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics), flush=True)  # first: an unwritable --rows must not lose the metrics
    if args.rows:
        try:
            args.rows.parent.mkdir(parents=True, exist_ok=True)
            args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        except OSError as err:
            print(f"stepjepa score: error: --rows {args.rows}: cannot write ({err.strerror or err})", file=sys.stderr)
            return 2
    return 0
