"""Tests of stepjepa/data/tokenization.py: exact tokens, labels and step spans on three tokenizer families.

The property tests re-derive every claim from the tokenizer's own character offsets of the
full chat text, independently of the module's searchsorted arithmetic.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from stepjepa.data.tokenization import (
    IGNORE_INDEX,
    TokenizationError,
    encode_records,
    load_tokenizer,
    render_conversation,
    step_char_spans,
    summarize,
)
from stepjepa.prompts import STEP_SEPARATOR
from tests.support import tokenizer_families as families
from tests.support.tokenization import (
    DATE,
    DECODES_EXACTLY,
    END_OF_TURN,
    FINAL,
    NO_LIMIT,
    copy_with_template,
    make_record,
    offsets_of,
    step_text,
)


def regions(record: dict, chat) -> np.ndarray:
    """Per character: 0 prompt, 1 Step 1 (+ separator), 2 Step 2 (+ separator), 3 the rest."""
    (_, e1), (_, e2) = step_char_spans(chat.text[chat.content_start : chat.content_end], record["steps"][:2])
    cuts = [chat.content_start, chat.content_start + e1, chat.content_start + e2]
    return np.searchsorted(cuts, np.arange(len(chat.text)), side="right")


def has_straddler(text: str, offsets: np.ndarray, region: np.ndarray) -> bool:
    """Some token holds non-whitespace characters of two regions."""
    for a, b in offsets:
        if len({region[c] for c in range(a, b) if not text[c].isspace()}) > 1:
            return True
    return False


def check_tokens_and_labels(name: str, record: dict, chat, full_row: dict, row: dict, max_length: int):
    """Exact tokens; labels = assistant content + end-of-turn token. Returns the labelled indices."""
    tok = families.FAMILIES[name]()
    assert chat.text == tok.apply_chat_template(record["messages"], tokenize=False, date_string=DATE)
    assert chat.text[chat.content_start : chat.content_end] == record["messages"][-1]["content"]
    ids, offsets = offsets_of(tok, chat.text)
    assert full_row["input_ids"] == ids  # exactly the tokenizer's tokens, and transformers' own path agrees
    assert tok.apply_chat_template(record["messages"], date_string=DATE)["input_ids"] == ids
    assert row["input_ids"] == ids[:max_length] and row["num_tokens"] == len(row["input_ids"])
    assert row["truncated"] == (len(ids) > max_length) and not full_row["truncated"]

    labels = np.asarray(full_row["labels"])
    on = np.flatnonzero(labels != IGNORE_INDEX)
    assert (np.diff(on) == 1).all() and (labels[on] == np.asarray(ids)[on]).all()
    covered, eot = chat.text[offsets[on[0]][0] : offsets[on[-1]][1]], END_OF_TURN[name]
    assert covered.endswith(eot) and tok.convert_ids_to_tokens(ids[on[-1]]) == eot
    assert covered[: -len(eot)].strip() == record["messages"][-1]["content"]  # whitespace only around
    assert offsets[on[0]][1] > chat.content_start and offsets[on[0] - 1][1] <= chat.content_start
    assert row["labels"] == full_row["labels"][:max_length]
    for span in (row["step1_span"], row["step2_span"]):  # positions never past the sequence
        assert span is None or 0 <= span[0] <= span[1] < row["num_tokens"]
    return on


def check_step_span(name: str, text: str, span: list[int], step_start: int, step_end: int) -> None:
    """Covered text == whitespace tail before the step + step text + head of its separator."""
    tok = families.FAMILIES[name]()
    ids, offsets = offsets_of(tok, text)
    first, last = span
    a, b = offsets[first][0], offsets[last][1]
    assert a <= step_start and text[a:step_start].strip() == ""
    assert b >= step_end and STEP_SEPARATOR.startswith(text[step_end:b])
    for _, end in offsets[first : last + 1]:  # every token's last character lies in this step
        assert step_start <= end - 1 < step_end + len(STEP_SEPARATOR)
    if name in DECODES_EXACTLY:
        assert tok.decode(ids[first : last + 1]) == text[a:b]


def check_record(name: str, record: dict, max_length: int) -> str:
    """Check every claim on one record; returns its outcome (for hypothesis statistics)."""
    tok = families.FAMILIES[name]()
    full_row = encode_records(tok, [record], NO_LIMIT, DATE).to_pylist()[0]
    row = encode_records(tok, [record], max_length, DATE).to_pylist()[0]
    chat = render_conversation(tok, record["messages"], DATE, record["id"])
    on = check_tokens_and_labels(name, record, chat, full_row, row, max_length)
    if len(record["steps"]) < 2:
        assert full_row["invalid_reason"] == row["invalid_reason"] == "fewer_than_2_steps"
        assert full_row["step1_span"] is None and row["step2_span"] is None
        return "fewer_than_2_steps"

    straddles = has_straddler(chat.text, offsets_of(tok, chat.text)[1], regions(record, chat))
    assert full_row["invalid_reason"] == ("boundary_token_straddles_steps" if straddles else None)
    if straddles:
        assert full_row["step1_span"] is None and full_row["step2_span"] is None
        assert row["invalid_reason"] == "boundary_token_straddles_steps"
        return "straddles"
    s1, s2 = full_row["step1_span"], full_row["step2_span"]
    assert full_row["jepa_valid"] and on[0] <= s1[0] <= s1[1] < s2[0] == s1[1] + 1 <= s2[1] < on[-1]
    c0 = chat.content_start
    char_spans = step_char_spans(chat.text[c0 : chat.content_end], record["steps"][:2])
    for (a, _), step, span in zip(char_spans, record["steps"], (s1, s2)):
        check_step_span(name, chat.text, span, c0 + a, c0 + a + len(step))

    if s2[1] >= max_length:  # a cut inside Step 2 leaves no pair
        assert row["invalid_reason"] == "truncated_in_step2" and row["step2_span"] is None
        return "truncated_in_step2"
    assert row["jepa_valid"] and row["step1_span"] == s1 and row["step2_span"] == s2
    return "valid, truncated later" if row["truncated"] else "valid"


# Mostly records with a JEPA pair; about a quarter with fewer than 2 steps.
steps_list = st.integers(0, 3).flatmap(
    lambda k: st.lists(step_text, max_size=1) if k == 0 else st.lists(step_text, min_size=2, max_size=4)
)


@pytest.mark.parametrize("name", list(families.FAMILIES))
@settings(max_examples=60, deadline=None)
@given(steps=steps_list, question=step_text, cut=st.floats(0.4, 1.6))
def test_tokens_labels_and_spans(name, steps, question, cut):
    """`cut`: max_length as a fraction of the conversation's length (>= 1: no truncation)."""
    tok, record = families.FAMILIES[name](), make_record(steps, question)
    length = len(offsets_of(tok, render_conversation(tok, record["messages"], DATE).text)[0])
    event(check_record(name, record, max(16, int(cut * length))))


def test_merged_newline_family_really_merges_blank_lines():
    tok = families.merged_newline_bpe()
    text = STEP_SEPARATOR.join(["She sells 3 + 4 = 7.", "The total is 12.", "Each day 8.", FINAL])
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    # Blank lines merged with text on both sides, e.g. "7.\n\nThe ": a straddling token.
    split = [p.partition("\n\n") for p in pieces]
    assert any(before.strip() and after.strip() for before, _, after in split), pieces
    # And the harmless merges the span rule must place correctly: "2.\n\n" and "\n\nJanet ".
    parts = [t.partition("\n\n") for t in tok.get_vocab() if "\n\n" in t]
    assert any(b.strip() and not a.strip() for b, _, a in parts)
    assert any(a.strip() and not b.strip() for b, _, a in parts)


@pytest.mark.parametrize("name", ["metaspace_unigram", "merged_newline_bpe"])
def test_straddling_and_valid_pairs_both_occur(name):
    """On GSM8K-like text these families give both outcomes, so both branches are exercised."""
    docs = families.corpus(200, seed=1)[:200]
    records = [make_record(doc.split("\n\n")[:-1], rid=f"r{i}") for i, doc in enumerate(docs)]
    table = encode_records(families.FAMILIES[name](), records, NO_LIMIT, DATE)
    stats = summarize(table)
    assert 0 < stats["jepa_valid"] < stats["count"]
    assert stats["invalid_by_reason"].get("boundary_token_straddles_steps", 0) > 0


@pytest.mark.parametrize("name", list(families.FAMILIES))
def test_truncation_exactly_at_the_end_of_step2(name):
    tok, record = families.FAMILIES[name](), make_record(["Janet has 16 eggs.", "She sells 3 + 4 = 7.", "So 12."])
    s2_end = encode_records(tok, [record], NO_LIMIT, DATE).column("step2_span").to_pylist()[0][1]
    cut = encode_records(tok, [record, record], s2_end, DATE)
    kept = encode_records(tok, [record], s2_end + 1, DATE)
    assert cut.column("invalid_reason").to_pylist() == ["truncated_in_step2"] * 2
    assert cut.column("num_tokens").to_pylist() == [s2_end] * 2
    assert kept.column("jepa_valid").to_pylist() == [True]
    assert kept.column("step2_span").to_pylist()[0][1] == s2_end


def test_step_char_spans_include_separator_and_reject_missing_steps():
    content = "a b\n\nc = 3.\n\n" + FINAL
    assert step_char_spans(content, ["a b", "c = 3."]) == [(0, 5), (5, 13)]
    assert step_char_spans("x\n\ny", ["x", "y"]) == [(0, 3), (3, 4)]
    with pytest.raises(TokenizationError, match=r"train-7: field steps\[1\]"):
        step_char_spans(content, ["a b", "missing"], record_id="train-7")


class _FakeDatetime:
    today = datetime(2025, 1, 1)

    @classmethod
    def now(cls, tz=None):
        return cls.today


def test_date_string_pins_templates_that_print_today(monkeypatch):
    from transformers.utils import chat_template_utils

    monkeypatch.setattr(chat_template_utils, "datetime", _FakeDatetime)
    tok, record = families.byte_level_bpe(), make_record(["Janet has 16 eggs.", "She sells 3."])
    texts, ids = [], []
    for today in (datetime(2025, 1, 1), datetime(2031, 6, 15)):
        monkeypatch.setattr(_FakeDatetime, "today", today)
        texts.append(tok.apply_chat_template(record["messages"], tokenize=False))
        ids.append(encode_records(tok, [record], NO_LIMIT, DATE).column("input_ids").to_pylist())
    assert "01 Jan 2025" in texts[0] and "15 Jun 2031" in texts[1]  # the fake clock is what the template reads
    assert ids[0] == ids[1]
    assert DATE in tok.decode(ids[0][0])


def test_zero_width_special_token_offsets_give_the_same_rows():
    """Some tokenizers report (0, 0) offsets for special tokens; results must not change."""
    tok = families.merged_newline_bpe()

    class ZeroSpecialOffsets:
        def __getattr__(self, attr):
            return getattr(tok, attr)

        def __len__(self):
            return len(tok)

        def __call__(self, texts, **kwargs):
            enc = tok(texts, **kwargs)
            special = set(tok.all_special_ids)
            enc["offset_mapping"] = [
                [(0, 0) if i in special else o for i, o in zip(ids, offs)]
                for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])
            ]
            return enc

    steps = ["Janet has 16 eggs.", "She sells 3 + 4 = 7.", "So 12."]
    records = [make_record(steps, rid=f"r{i}") for i in range(3)]
    assert encode_records(ZeroSpecialOffsets(), records, 40, DATE) == encode_records(tok, records, 40, DATE)


def test_errors_name_the_record():
    tok = families.merged_newline_bpe()
    with pytest.raises(TokenizationError, match="train-000009: field messages"):
        encode_records(tok, [make_record(["a", "b"], rid="train-000009") | {"messages": []}], 64, DATE)
    no_id = {k: v for k, v in make_record(["a", "b"], rid="x").items() if k != "id"}
    with pytest.raises(TokenizationError, match="line 2: field id must be a non-empty string"):
        encode_records(tok, [make_record(["a", "b"], rid="r1"), no_id], 64, DATE)
    rewriting = copy_with_template(tok, "")
    rewriting.chat_template = tok.chat_template.replace("message['content']", "message['content'] | upper")
    with pytest.raises(TokenizationError, match="train-000003: field messages\\[-1\\].content"):
        encode_records(rewriting, [make_record(["a b", "c"], rid="train-000003")], 64, DATE)
    no_eot = copy_with_template(tok, "")
    no_eot.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    no_eot.chat_template += "{% if add_generation_prompt %}assistant: {% endif %}"
    with pytest.raises(TokenizationError, match="train-000004: .*end-of-turn"):
        encode_records(no_eot, [make_record(["a b", "c"], rid="train-000004")], 64, DATE)


def test_load_tokenizer_round_trip_and_missing_template(tmp_path):
    tok = families.byte_level_bpe()
    tok.save_pretrained(tmp_path / "with")
    loaded = load_tokenizer(str(tmp_path / "with"))
    assert loaded.is_fast and loaded.chat_template == tok.chat_template
    bare = copy_with_template(tok, None)
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(TokenizationError, match="no chat template"):
        load_tokenizer(str(tmp_path / "bare"))


def test_summarize_counts():
    tok = families.byte_level_bpe()
    records = [
        make_record(["Janet has 16 eggs.", "She sells 3."], rid="a"),
        make_record(["Only one step."], rid="b"),
        make_record(["Janet has 16 eggs.", "She sells 3 + 4 = 7 and so on for a while."], rid="c"),
    ]
    table = encode_records(tok, records, 90, DATE)
    stats = summarize(table)
    assert stats["count"] == 3 and stats["tokens_max"] <= 90
    assert stats["jepa_valid"] + sum(stats["invalid_by_reason"].values()) == 3
    assert stats["invalid_by_reason"]["fewer_than_2_steps"] == 1
    assert table.schema.field("input_ids").type.value_type == "int32"


def test_content_is_found_when_the_answer_turn_renders_differently():
    """Qwen3-style templates add an empty think block before a finished answer only."""
    tok = copy_with_template(families.merged_newline_bpe(), None)
    tok.chat_template = families.merged_newline_bpe().chat_template.replace(
        "'<|im_start|>' + message['role'] + '\\n' + message['content']",
        "'<|im_start|>' + message['role'] + '\\n' + ('<think>\\n\\n</think>\\n\\n' if message['role'] == "
        "'assistant' else '') + message['content']",
    )
    record = make_record(["Janet has 16 eggs.", "She sells 3 + 4 = 7."], question="Janet has 16 eggs.")
    chat = render_conversation(tok, record["messages"], DATE)
    assert "<think>" in chat.text[: chat.content_start]
    assert chat.text[chat.content_start : chat.content_end] == record["messages"][-1]["content"]
    row = encode_records(tok, [record], NO_LIMIT, DATE).to_pylist()[0]
    assert row["jepa_valid"] or row["invalid_reason"] == "boundary_token_straddles_steps"


def test_no_records_give_an_empty_table_with_the_schema():
    table = encode_records(families.byte_level_bpe(), [], 64, DATE)
    assert table.num_rows == 0 and "step2_span" in table.column_names
    assert summarize(table)["count"] == 0


def test_whitespace_added_tokens_are_not_taken_for_the_end_of_turn():
    """A template writing "content\\n<|im_end|>" with "\\n" an added (non-special) token."""
    from tokenizers import AddedToken

    tok = copy_with_template(families.merged_newline_bpe(), None)
    tok.add_tokens([AddedToken("\n", special=False, normalized=False)])
    tok.chat_template = families.merged_newline_bpe().chat_template.replace(
        "message['content'] + '<|im_end|>", "message['content'] + '\\n<|im_end|>"
    )
    record = make_record(["Janet has 16 eggs.", "She sells 3."])
    row = encode_records(tok, [record], NO_LIMIT, DATE).to_pylist()[0]
    labelled = [i for i, label in zip(row["input_ids"], row["labels"]) if label != IGNORE_INDEX]
    assert tok.convert_ids_to_tokens(labelled[-2:]) == ["\n", "<|im_end|>"]
