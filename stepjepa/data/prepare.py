"""From raw GSM8K JSON lines to chat conversations with their steps (docs/step-jepa.md section 1).

Every input line is accounted for: kept, kept as LM-only (fewer than 2 steps), dropped
as short (by `data.short_records`), or skipped with a reason. Skips name the file, line and
field; `on_error="raise"` turns the first one into an error instead.

A record's id is a hash of its content, not its line number, so that the validation split
carved out of the training records (`split_validation`) does not depend on file order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from stepjepa.config import DataConfig
from stepjepa.data.steps import RecordError, Solution, split_record
from stepjepa.inputs import scan_json_lines
from stepjepa.prompts import STEP_SEPARATOR

# The prepared splits, in the order the stages write them: `validation` is carved out of
# the raw `train` file, `train` and `test` are the raw files' records.
PREPARED_SPLITS = ("train", "validation", "test")


class BadRecordError(ValueError):
    """A raw record that cannot be used, located by file, line and field."""


@dataclass
class PrepareStats:
    read: int = 0
    kept: int = 0
    kept_lm_only: int = 0
    dropped_short: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    """The first skip messages, for the report."""

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(message)

    def as_dict(self) -> dict[str, Any]:
        accounted = self.kept + self.dropped_short + sum(self.skipped.values())
        assert accounted == self.read, "every record must be accounted for"
        return {
            "read": self.read,
            "kept": self.kept,
            "kept_lm_only": self.kept_lm_only,
            "dropped_short": self.dropped_short,
            "skipped": sum(self.skipped.values()),
            "skipped_by_reason": dict(sorted(self.skipped.items())),
            "skip_examples": self.examples,
        }


def assistant_message(steps: list[str], gold: str, answer_template: str) -> str:
    """Steps joined by a blank line, then the final answer segment."""
    final = answer_template.replace("{answer}", gold)
    return STEP_SEPARATOR.join([*steps, final])


def to_conversation(solution: Solution, cfg: DataConfig) -> dict[str, Any]:
    return {
        "question": solution.question,
        "gold": solution.gold,
        "steps": solution.steps,
        "total_steps": len(solution.steps),
        "messages": [
            {"role": "system", "content": cfg.system_prompt},
            {"role": "user", "content": solution.question},
            {"role": "assistant", "content": assistant_message(solution.steps, solution.gold, cfg.answer_template)},
        ],
    }


def prepare_file(
    path: Path, split: str, cfg: DataConfig, on_error: Literal["skip", "raise"] = "skip"
) -> tuple[list[dict[str, Any]], PrepareStats]:
    """Read one raw split file; return its conversations and the accounting."""
    stats, records, seen = PrepareStats(), [], {}
    for lineno, obj in scan_json_lines(path):
        stats.read += 1
        try:
            if isinstance(obj, json.JSONDecodeError):
                raise RecordError("(line)", "malformed_json", f"not valid JSON ({obj.msg} at column {obj.colno})")
            solution = split_record(obj, cfg.format, cfg.keep_annotations)
        except RecordError as err:
            message = f"{path}:{lineno}: {err}"
            if on_error == "raise":
                raise BadRecordError(message) from None
            stats.skip(err.reason, message)
            continue
        record_id = f"{split}-{content_hash(obj)}"
        if record_id in seen:
            stats.skip("duplicate", f"{path}:{lineno}: the same record as line {seen[record_id]}")
            continue
        seen[record_id] = lineno
        if len(solution.steps) < 2:
            if cfg.short_records == "drop":
                stats.dropped_short += 1
                continue
            stats.kept_lm_only += 1
        stats.kept += 1
        record = {"id": record_id, "source": str(path), "line": lineno}
        records.append(record | to_conversation(solution, cfg))
    return records, stats


def content_hash(obj: Any) -> str:
    """12 hex digits of the record's canonical JSON: the same record, the same id, wherever it stands."""
    canonical = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def split_validation(records: list[dict[str, Any]], size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, validation): the `size` records whose salted id hash is smallest go to validation.

    A hash of the id, not a random draw or the file order: shuffling the input file, or
    adding records to it, moves no other record between the splits. Both keep file order.
    """
    if size >= len(records):
        raise BadRecordError(
            f"data.validation_size={size} would leave no training records "
            f"(the train file has {len(records)} usable records)"
        )
    rank = sorted(records, key=lambda r: hashlib.sha256(f"validation:{r['id']}".encode()).hexdigest())
    chosen = {r["id"] for r in rank[:size]}
    return [r for r in records if r["id"] not in chosen], [r for r in records if r["id"] in chosen]


def write_json_lines(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
