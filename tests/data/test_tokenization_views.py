"""The user/assistant spans (the original LLM-JEPA pair) on three tokenizer families.

Each claim is re-derived from the tokenizer itself: the user span's tokens are exactly the
tokens of the conversation rendered without its assistant message, and the assistant
span runs from the next token to the end-of-turn token that closes the answer.
"""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from stepjepa.data.tokenization import IGNORE_INDEX, encode_records, render_conversation, summarize
from tests.support import tokenizer_families as families
from tests.support.tokenization import (
    DATE,
    DECODES_EXACTLY,
    END_OF_TURN,
    NO_LIMIT,
    copy_with_template,
    make_record,
    offsets_of,
    step_text,
)


def check_user_assistant(name: str, record: dict, max_length: int) -> str:
    tok = families.FAMILIES[name]()
    full = encode_records(tok, [record], NO_LIMIT, DATE).to_pylist()[0]
    row = encode_records(tok, [record], max_length, DATE).to_pylist()[0]
    assert full["ua_valid"] and full["ua_invalid_reason"] is None
    (u0, u_end), (a0, a_end) = full["user_span"], full["assistant_span"]
    user_text = tok.apply_chat_template(record["messages"][:-1], tokenize=False, date_string=DATE)
    ids, offsets = offsets_of(tok, render_conversation(tok, record["messages"], DATE).text)
    assert u0 == 0 and a0 == u_end + 1
    assert ids[: u_end + 1] == offsets_of(tok, user_text)[0], "the user span is the user turn, exactly"
    assert tok.convert_ids_to_tokens(ids[a_end]) == END_OF_TURN[name]
    labels = full["labels"]
    assert labels[a_end] != IGNORE_INDEX and all(x == IGNORE_INDEX for x in labels[a_end + 1 :])
    assert all(x == IGNORE_INDEX for x in labels[: u_end + 1]), "no label in the user turn"
    if name in DECODES_EXACTLY:
        text = render_conversation(tok, record["messages"], DATE).text
        assert tok.decode(ids[a0 : a_end + 1]) == text[len(user_text) : offsets[a_end][1]]
    if a_end >= max_length:
        assert not row["ua_valid"] and row["ua_invalid_reason"] == "truncated_in_assistant"
        assert row["user_span"] is None and row["assistant_span"] is None
        return "truncated_in_assistant"
    assert row["ua_valid"] and row["user_span"] == [0, u_end] and row["assistant_span"] == [a0, a_end]
    return "valid"


@pytest.mark.parametrize("name", list(families.FAMILIES))
@settings(max_examples=40, deadline=None)
@given(steps=st.lists(step_text, min_size=0, max_size=4), question=step_text, cut=st.floats(0.4, 1.6))
def test_user_and_assistant_spans(name, steps, question, cut):
    """Records with any number of steps (0 or 1 too: the pair needs none) and any cut."""
    tok, record = families.FAMILIES[name](), make_record(steps, question)
    length = len(offsets_of(tok, render_conversation(tok, record["messages"], DATE).text)[0])
    event(check_user_assistant(name, record, max(16, int(cut * length))))


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_truncation_exactly_at_the_end_of_the_assistant(name):
    tok, record = families.FAMILIES[name](), make_record(["Janet has 16 eggs.", "She sells 3 + 4 = 7.", "So 12."])
    a_end = encode_records(tok, [record], NO_LIMIT, DATE).column("assistant_span").to_pylist()[0][1]
    cut, kept = encode_records(tok, [record], a_end, DATE), encode_records(tok, [record], a_end + 1, DATE)
    assert cut.column("ua_invalid_reason").to_pylist() == ["truncated_in_assistant"]
    assert cut.column("jepa_valid").to_pylist() == [True], "the steps pair does not depend on it"
    assert kept.column("ua_valid").to_pylist() == [True]
    stats = summarize(cut)
    assert stats["ua_valid"] == 0 and stats["ua_invalid_by_reason"] == {"truncated_in_assistant": 1}


def test_a_template_whose_user_turn_is_no_prefix_gives_no_pair():
    """A template that renders the last user turn differently once answered: counted, not guessed."""
    template = (
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'user' and loop.last -%}[last user] {{ m['content'] }}<|im_end|>"
        "{%- elif m['role'] == 'assistant' -%}{{ m['content'] }}<|im_end|>"
        "{%- else -%}[{{ m['role'] }}] {{ m['content'] }}<|im_end|>{%- endif -%}"
        "{%- endfor -%}"
    )
    tok = copy_with_template(families.merged_newline_bpe(), template)
    table = encode_records(tok, [make_record(["Janet has 16 eggs.", "She sells 3 + 4 = 7.", "So 12."])], NO_LIMIT, DATE)
    assert table.column("ua_invalid_reason").to_pylist() == ["user_turn_not_a_prefix"]
    assert table.column("jepa_valid").to_pylist() == [True]
    assert summarize(table)["ua_invalid_by_reason"] == {"user_turn_not_a_prefix": 1}
