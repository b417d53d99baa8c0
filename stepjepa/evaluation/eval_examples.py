"""Evaluation questions: the chat messages before the answer and the gold answer, read from
a prepared file (docs/data-format.md) or a raw GSM8K file."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from stepjepa.evaluation.score import gold_value, text_field
from stepjepa.inputs import InputError, read_jsonl


@dataclass(frozen=True)
class Example:
    """One question: the chat messages before the answer, and the gold answer."""

    id: str
    messages: list[dict[str, str]]
    answer: str
    gold: Fraction


def load_examples(path: str | Path, system_prompt: str, limit: int | None = None) -> list[Example]:
    """The first `limit` examples of a prepared file (docs/data-format.md) or a raw GSM8K file.

    Prepared records give `messages` (everything before the first assistant turn is the
    prompt) and `gold`; raw records (`question`, `answer`) get `system_prompt`.
    """
    examples = []
    for number, record in read_jsonl(path)[:limit]:
        where = f"{path}:{number}"
        if "messages" in record:
            messages, gold_field = _prompt_messages(record["messages"], where), "gold"
        else:
            question = text_field(record, "question", where)
            messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
            gold_field = "answer"
        answer = text_field(record, gold_field, where, numbers_ok=True)
        example_id = str(record.get("id", f"{Path(path).stem}-{number:06d}"))
        examples.append(Example(example_id, messages, answer, gold_value(record, gold_field, where)))
    return examples


def _prompt_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """The messages before the first assistant turn, checked; the last must be the user's."""
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise InputError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
    roles = [m["role"] for m in messages]
    prompt = messages[: roles.index("assistant")] if "assistant" in roles else messages
    if not prompt or prompt[-1]["role"] != "user":
        raise InputError(f"{where}: field 'messages' has no user message before the assistant turn")
    return [{"role": m["role"], "content": m["content"]} for m in prompt]
