"""Conversations to token ids, labels and step spans (docs/step-jepa.md section 2, docs/data-format.md).

Each conversation is rendered with the tokenizer's chat template and tokenised **once**, as a
whole, by the fast tokenizer; labels and step spans then come from the tokens' character
offsets (numpy `searchsorted`), never from searching for or decoding token ids.

Span rule: a token belongs to the step whose character range (step text plus its trailing
`"\\n\\n"`) holds the token's **last** character, so `"\\n\\nThe"` opens the next step and
view 1 never holds text of Step 2. A token with non-whitespace text on both sides of a
boundary (prompt | Step 1 | Step 2 | rest) makes the pair invalid. Spans are stored only for
valid pairs, so every stored position lies inside the (possibly truncated) sequence.
The original LLM-JEPA pair (user turn, assistant turn) is stored the same way, from the
end of the user turn's own rendering (`user_span`, `assistant_span`, `ua_valid`).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from stepjepa.prompts import STEP_SEPARATOR
from stepjepa.vocabulary import IGNORE_INDEX

_INT32_LIST = pa.list_(pa.int32())
# The columns of `data/tokenized/*.parquet`, as docs/data-format.md describes them.
SCHEMA = pa.schema(
    {
        "id": pa.string(),
        "input_ids": _INT32_LIST,
        "labels": _INT32_LIST,
        "step1_span": _INT32_LIST,
        "step2_span": _INT32_LIST,
        "jepa_valid": pa.bool_(),
        "invalid_reason": pa.string(),
        "truncated": pa.bool_(),
        "num_tokens": pa.int32(),
        "user_span": _INT32_LIST,
        "assistant_span": _INT32_LIST,
        "ua_valid": pa.bool_(),
        "ua_invalid_reason": pa.string(),
    }
)


class TokenizationError(ValueError):
    """A record, template or tokenizer that cannot give exact labels and spans."""


@dataclass(frozen=True)
class RenderedChat:
    """The full chat text; the assistant content is `text[content_start:content_end]`.

    `user_end`: where the user turn ends (`text[:user_end]` is the conversation rendered
    without its assistant message), or None when that rendering is not a prefix of `text`.
    """

    text: str
    content_start: int
    content_end: int
    user_end: int | None = None


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """A fast (Rust) tokenizer with a chat template: offsets and the template are both needed."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        name_or_path, revision=revision, trust_remote_code=trust_remote_code, use_fast=True
    )
    if not tok.is_fast:
        raise TokenizationError(f"{name_or_path}: no fast tokenizer (tokenizer.json); step spans need its offsets")
    if not tok.chat_template:
        raise TokenizationError(f"{name_or_path}: the tokenizer has no chat template")
    return tok


def check_records(records: list[dict]) -> None:
    """Fail, naming the record (or its line) and field, on input that is not a prepared record:
    `encode_records` does it too, and a caller can do it before loading a tokenizer."""
    for line, record in enumerate(records, start=1):
        _check_record(record, line)


def _check_record(record: dict, line: int) -> None:
    """Fail early, naming the record (or its line) and field, on input that is not a prepared record."""
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id:
        raise TokenizationError(f"line {line}: field id must be a non-empty string (got {record_id!r})")
    steps = record.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
        raise TokenizationError(f"record {record_id}: field steps must be a list of strings")
    _check_messages(record.get("messages"), record_id)


def _check_messages(messages: Any, record_id: str) -> None:
    if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
        raise TokenizationError(
            f"record {record_id}: field messages must be a list of messages ending with an assistant message"
        )
    if not isinstance(messages[-1].get("content"), str):
        raise TokenizationError(f"record {record_id}: field messages[-1].content must be a string")


def _locate_content(full: str, prompt: str, content: str, record_id: str, user_turns: str = "") -> RenderedChat:
    """Find the assistant content in `full`, given the prompt rendered with a generation prompt
    (and `user_turns`, the prompt rendered without one, for the end of the user turn)."""
    if full.startswith(prompt) and full.startswith(content, len(prompt)):
        start = len(prompt)
    else:
        # Some templates render the answer's turn differently from the generation prompt (e.g.
        # Qwen3 adds an empty think block): search only after the text both renderings share,
        # so a step that also appears in the question is never matched.
        start = full.find(content, len(os.path.commonprefix([full, prompt])))
        if start < 0:
            raise TokenizationError(
                f"record {record_id}: field messages[-1].content does not appear verbatim after the prompt "
                "in the chat template's text (does the template rewrite the assistant message?)"
            )
    user_end = len(user_turns) if user_turns and full.startswith(user_turns) and len(user_turns) <= start else None
    return RenderedChat(full, start, start + len(content), user_end)


def render_conversation(tokenizer, messages: list[dict], date_string: str, record_id: str = "?") -> RenderedChat:
    """Full chat text and the character range of the assistant content inside it.

    `date_string` is passed to the template, pinning templates that print today's date
    (Llama-3); templates that do not use it ignore it.
    """
    _check_messages(messages, record_id)
    full = tokenizer.apply_chat_template(messages, tokenize=False, date_string=date_string)
    prompt = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True, date_string=date_string
    )
    user_turns = tokenizer.apply_chat_template(messages[:-1], tokenize=False, date_string=date_string)
    return _locate_content(full, prompt, messages[-1]["content"], record_id, user_turns)


def step_char_spans(
    content: str, steps: list[str], separator: str = STEP_SEPARATOR, record_id: str = "?"
) -> list[tuple[int, int]]:
    """`[start, end)` of each step in `content`, including its trailing separator when present.

    >>> step_char_spans("a b\\n\\nc\\n\\nThe end.", ["a b", "c"], "\\n\\n")
    [(0, 5), (5, 8)]
    """
    spans, pos = [], 0
    for i, step in enumerate(steps):
        start = content.find(step, pos) if step else -1
        # Steps follow one another with only whitespace between: anything else is a data bug.
        if start < 0 or content[pos:start].strip():
            raise TokenizationError(
                f"record {record_id}: field steps[{i}] is not found in order in the assistant content"
            )
        end = start + len(step)
        if content.startswith(separator, end):
            end += len(separator)
        spans.append((start, end))
        pos = end
    return spans


def _token_bounds(offsets: np.ndarray, text_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token (start, end) character offsets, both nondecreasing.

    Some tokenizers report (0, 0) for special tokens: such zero-width tokens are placed at
    the start of the next real token, so they belong to the text that follows them.
    """
    starts, ends = offsets[:, 0].copy(), offsets[:, 1].copy()
    empty = starts == ends
    if empty.any():
        following = np.minimum.accumulate(np.where(empty, text_len, starts)[::-1])[::-1]
        starts[empty] = ends[empty] = following[empty]
    return starts, ends


def _labels(
    ids: np.ndarray, ends: np.ndarray, chat: RenderedChat, is_special: np.ndarray, record_id: str
) -> np.ndarray:
    """Token ids on the assistant content and on the special token that closes it, else -100."""
    first, after = np.searchsorted(ends, [chat.content_start, chat.content_end], side="right")
    closing = after + np.flatnonzero(is_special[ids[after:]])[:1]
    # Only whitespace may sit between the content and its end-of-turn token: other text would
    # be template text the model must produce, which we do not guess at. (The gap ends where
    # the token before the closing one ends: the closing token's own offsets may be (0, 0).)
    gap_end = max(chat.content_end, int(ends[closing[0] - 1])) if closing.size else 0
    if not closing.size or chat.text[chat.content_end : gap_end].strip():
        raise TokenizationError(
            f"record {record_id}: the chat template does not close the assistant message with a special "
            f"end-of-turn token (text after it: {chat.text[chat.content_end : chat.content_end + 30]!r}); "
            "labels need one so the model learns to stop"
        )
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int32)
    labels[first : closing[0] + 1] = ids[first : closing[0] + 1]
    return labels


def _straddles(text: str, starts: np.ndarray, ends: np.ndarray, token: int, boundary: int) -> bool:
    """Whether `token`, the one holding char `boundary`, has non-whitespace text on both sides of it."""
    if token >= len(ends) or starts[token] >= boundary:
        return False
    return bool(text[starts[token] : boundary].strip()) and bool(text[boundary : ends[token]].strip())


def _step_pair(
    record: dict, chat: RenderedChat, starts: np.ndarray, ends: np.ndarray, max_length: int
) -> tuple[list[int] | None, list[int] | None, str | None]:
    """(step1_span, step2_span, invalid_reason); spans are inclusive token indices, None if invalid."""
    if len(record["steps"]) < 2:
        return None, None, "fewer_than_2_steps"
    content = chat.text[chat.content_start : chat.content_end]
    (a1, e1), (a2, e2) = step_char_spans(content, record["steps"][:2], record_id=record["id"])
    bounds = chat.content_start + np.array([a1, a2, e2, e1])
    # The token holding char b is the first one ending after b: for a span start that is the
    # span's first token, for a span end the token just after the span.
    holder = np.searchsorted(ends, bounds, side="right")
    if any(_straddles(chat.text, starts, ends, t, b) for t, b in zip(holder[:3], bounds[:3])):
        return None, None, "boundary_token_straddles_steps"
    span1, span2 = [int(holder[0]), int(holder[3]) - 1], [int(holder[1]), int(holder[2]) - 1]
    if span1[0] > span1[1] or span2[0] > span2[1]:
        return None, None, "empty_step_span"  # cannot happen for non-empty steps; kept as a guard
    if span2[1] >= max_length:
        return None, None, "truncated_in_step2"
    return span1, span2, None


def _user_assistant_pair(
    chat: RenderedChat, starts: np.ndarray, ends: np.ndarray, labels: np.ndarray, max_length: int
) -> tuple[list[int] | None, list[int] | None, str | None]:
    """(user_span, assistant_span, invalid_reason) of the original LLM-JEPA pair (docs/step-jepa.md section 8).

    The user span is `[0, u_end]`, everything up to the end of the user turn (the system
    prompt too, as in the original's user view); the assistant span runs from the next
    token (the assistant turn's header) to the end-of-turn token that closes the message,
    its last label. The span rule is the steps' one: a token belongs to the turn that holds
    its last character.
    """
    if chat.user_end is None:
        return None, None, "user_turn_not_a_prefix"
    first = int(np.searchsorted(ends, chat.user_end, side="right"))
    if _straddles(chat.text, starts, ends, first, chat.user_end):
        return None, None, "boundary_token_straddles_turns"
    labelled = np.flatnonzero(labels != IGNORE_INDEX)
    a_end = int(labelled[-1]) if labelled.size else -1
    if a_end >= max_length:
        return None, None, "truncated_in_assistant"
    if not 0 < first <= a_end:
        return None, None, "empty_turn_span"
    return [0, first - 1], [first, a_end], None


def _render_all(tokenizer, records: list[dict], date_string: str) -> list[RenderedChat]:
    """`render_conversation` for all records with two batched template calls (about 2x faster)."""
    check_records(records)
    messages = [r["messages"] for r in records]
    fulls = tokenizer.apply_chat_template(messages, tokenize=False, date_string=date_string)
    prompts = tokenizer.apply_chat_template(
        [m[:-1] for m in messages], tokenize=False, add_generation_prompt=True, date_string=date_string
    )
    user_turns = tokenizer.apply_chat_template([m[:-1] for m in messages], tokenize=False, date_string=date_string)
    contents = [m[-1]["content"] for m in messages]
    return [
        _locate_content(full, prompt, content, r["id"], user)
        for full, prompt, content, user, r in zip(fulls, prompts, contents, user_turns, records)
    ]


def _special_lookup(tokenizer) -> np.ndarray:
    """Boolean table over token ids: special or added tokens (the end-of-turn candidates).

    Added tokens that are only whitespace (some tokenizers add "\\n" or runs of spaces) are
    ordinary text, never an end of turn.
    """
    added = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special or t.content.strip()}
    ids = set(tokenizer.all_special_ids) | added
    table = np.zeros(max(len(tokenizer), max(ids, default=0) + 1), dtype=bool)
    table[list(ids)] = True
    return table


def _list_column(arrays: list[np.ndarray]) -> pa.Array:
    """A list<int32> column built from numpy arrays, without a Python object per element."""
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays).astype(np.int32)))


def encode_records(tokenizer, records: list[dict], max_length: int, date_string: str) -> pa.Table:
    """Prepared records (docs/data-format.md) -> one row per conversation, columns of `SCHEMA`."""
    if not getattr(tokenizer, "is_fast", False):
        raise TokenizationError("encode_records needs a fast tokenizer: step spans come from its offsets")
    if not records:
        return SCHEMA.empty_table()
    chats = _render_all(tokenizer, records, date_string)
    encoded = tokenizer([c.text for c in chats], add_special_tokens=False, return_offsets_mapping=True)
    is_special = _special_lookup(tokenizer)
    ids_col, labels_col, pairs, ua_pairs, lengths = [], [], [], [], []
    for record, chat, ids, offsets in zip(records, chats, encoded["input_ids"], encoded["offset_mapping"]):
        ids = np.asarray(ids, dtype=np.int32)
        starts, ends = _token_bounds(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), len(chat.text))
        labels = _labels(ids, ends, chat, is_special, record["id"])
        labels_col.append(labels[:max_length])
        ids_col.append(ids[:max_length])
        pairs.append(_step_pair(record, chat, starts, ends, max_length))
        ua_pairs.append(_user_assistant_pair(chat, starts, ends, labels, max_length))
        lengths.append(len(ids))
    span1, span2, reasons = zip(*pairs)
    user, assistant, ua_reasons = zip(*ua_pairs)
    return pa.table(
        {
            "id": [r["id"] for r in records],
            "input_ids": _list_column(ids_col),
            "labels": _list_column(labels_col),
            "step1_span": list(span1),
            "step2_span": list(span2),
            "jepa_valid": [r is None for r in reasons],
            "invalid_reason": list(reasons),
            "truncated": [n > max_length for n in lengths],
            "num_tokens": [len(a) for a in ids_col],
            "user_span": list(user),
            "assistant_span": list(assistant),
            "ua_valid": [r is None for r in ua_reasons],
            "ua_invalid_reason": list(ua_reasons),
        },
        schema=SCHEMA,
    )


def summarize(table: pa.Table) -> dict[str, Any]:
    """Metrics of a tokenised split: token lengths, truncation, valid JEPA pairs (steps and
    user/assistant), invalid by reason."""
    n = table.column("num_tokens").to_numpy().astype(np.int64)
    m = n if len(n) else np.zeros(1, np.int64)  # an empty split reports zeros, keeping the keys stable
    reasons = Counter(r for r in table.column("invalid_reason").to_pylist() if r is not None)
    ua_reasons = Counter(r for r in table.column("ua_invalid_reason").to_pylist() if r is not None)
    return {
        "count": len(n),
        "tokens_min": int(m.min()),
        "tokens_mean": round(float(m.mean()), 2),
        "tokens_p50": float(np.percentile(m, 50)),
        "tokens_p95": float(np.percentile(m, 95)),
        "tokens_max": int(m.max()),
        "truncated": int(table.column("truncated").to_numpy().sum()),
        "jepa_valid": int(table.column("jepa_valid").to_numpy().sum()),
        "invalid_by_reason": dict(sorted(reasons.items())),
        "ua_valid": int(table.column("ua_valid").to_numpy().sum()),
        "ua_invalid_by_reason": dict(sorted(ua_reasons.items())),
    }


def max_length_warning(summary: dict[str, Any], max_length: int, share: float = 0.2) -> str | None:
    """A warning when `max_length` cuts Step 2 of at least `share` of a split's rows (each then
    loses its JEPA pair and trains as SFT); `summary` is what `summarize` returns."""
    lost, count = summary["invalid_by_reason"].get("truncated_in_step2", 0), summary["count"]
    if not count or lost < share * count:
        return None
    return (
        f"tokenize.max_length={max_length} cuts Step 2 of {lost} of {count} rows ({lost / count:.0%}): "
        "they lose their JEPA pair; raise tokenize.max_length"
    )
