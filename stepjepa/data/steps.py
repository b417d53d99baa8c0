"""Splitting a worked solution into reasoning steps (docs/step-jepa.md section 1).

Two input formats sit behind one interface, `split_record(record, fmt, keep_annotations)`:

- `gsm8k`: `{"question", "answer"}`; the answer is one step per line, then `#### 72`.
- `deepseek`: `{"question", "deepseek_response"}` with `<think>..</think>` and
  `**Step N:**` markers; the gold answer comes from `answer` (after `####`) when present,
  else from the last `\\boxed{..}` of the response.

A record that cannot be read raises `RecordError` naming the field; the caller adds the
file and line and decides whether to stop or to count a skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from stepjepa.data.answers import extract_boxed

ANNOTATION = re.compile(r"<<[^<>]*>>")
DEEPSEEK_STEP = re.compile(r"\*\*\s*Step\s+\d+\s*:?\s*\*\*\s*:?", re.IGNORECASE)
THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


class RecordError(ValueError):
    """A record that cannot be split; `reason` is a short key used to count skips."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(f"field {field!r}: {detail}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Solution:
    question: str
    steps: list[str]
    gold: str


def _text_field(record: dict[str, Any], field: str) -> str:
    if field not in record:
        raise RecordError(field, "missing_field", "missing")
    value = record[field]
    if not isinstance(value, str):
        raise RecordError(field, "bad_type", f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RecordError(field, "empty_field", "is empty")
    return value


def split_gsm8k(record: dict[str, Any], keep_annotations: bool = False) -> Solution:
    """Steps are the non-empty lines before the `####` line, stripped."""
    question = _text_field(record, "question").strip()
    answer = _text_field(record, "answer")
    body, sep, final = answer.rpartition("####")
    if not sep:
        raise RecordError("answer", "no_final_answer", "has no '#### <answer>' line")
    gold = final.strip()
    if not gold:
        raise RecordError("answer", "no_final_answer", "has an empty '####' answer")
    if not keep_annotations:
        body = ANNOTATION.sub("", body)
    steps = [line.strip() for line in body.splitlines() if line.strip()]
    return Solution(question, steps, gold)


def split_deepseek(record: dict[str, Any], keep_annotations: bool = False) -> Solution:
    """Steps are the texts after each `**Step N:**` marker, outside `<think>` blocks."""
    question = _text_field(record, "question").strip()
    response = _text_field(record, "deepseek_response")
    visible = THINK_BLOCK.sub("", response)
    if "<think>" in visible:  # an unclosed think block: everything after it is hidden
        visible = visible.split("<think>", 1)[0]
    parts = DEEPSEEK_STEP.split(visible)
    steps = [p if keep_annotations else ANNOTATION.sub("", p) for p in parts[1:]]
    # Empty steps are dropped after the annotations go: a step that was only `<<2*3=6>>`
    # would otherwise be an empty string that no tokenised span can hold.
    steps = [s.strip() for s in steps if s.strip()]
    if "answer" in record:
        gold = split_gsm8k({"question": question, "answer": record["answer"]}).gold
    else:
        gold = extract_boxed(response) or ""
        if not gold:
            raise RecordError("deepseek_response", "no_final_answer", "has no \\boxed{} answer")
    if steps:  # the final step usually restates the boxed answer: keep its reasoning only
        steps[-1] = re.sub(r"\\boxed\{.*\}\s*$", "", steps[-1], flags=re.DOTALL).strip() or steps[-1]
    return Solution(question, steps, gold)


SPLITTERS = {"gsm8k": split_gsm8k, "deepseek": split_deepseek}


def split_record(
    record: dict[str, Any], fmt: Literal["gsm8k", "deepseek"] = "gsm8k", keep_annotations: bool = False
) -> Solution:
    if not isinstance(record, dict):
        raise RecordError("(record)", "not_an_object", f"expected a JSON object, got {type(record).__name__}")
    return SPLITTERS[fmt](record, keep_annotations)
