"""Splitting solutions into steps, for both input formats."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.data.prepare import assistant_message
from stepjepa.data.steps import RecordError, split_record

NATALIA = {
    "question": "Natalia sold clips to 48 of her friends in April, and then half as many in May. Total?",
    "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
}


def test_gsm8k_steps_annotations_removed():
    sol = split_record(NATALIA)
    assert sol.steps == ["Natalia sold 48/2 = 24 clips in May.", "Natalia sold 48+24 = 72 clips."]
    assert sol.gold == "72"


def test_gsm8k_annotations_kept_by_param():
    assert "<<48/2=24>>" in split_record(NATALIA, keep_annotations=True).steps[0]


def test_blank_lines_are_not_steps_and_gold_keeps_commas():
    sol = split_record({"question": "q", "answer": "a\n\n  \nb  \n#### 1,000"})
    assert sol.steps == ["a", "b"] and sol.gold == "1,000"


@pytest.mark.parametrize(
    "record, field, reason",
    [
        ({"answer": "a\nb\n#### 1"}, "question", "missing_field"),
        ({"question": "q"}, "answer", "missing_field"),
        ({"question": "q", "answer": "   "}, "answer", "empty_field"),
        ({"question": "q", "answer": 5}, "answer", "bad_type"),
        ({"question": "q", "answer": "a\nb\n"}, "answer", "no_final_answer"),
        ({"question": "q", "answer": "a\nb\n####  "}, "answer", "no_final_answer"),
        (["not", "a", "dict"], "(record)", "not_an_object"),
    ],
)
def test_bad_records_name_the_field(record, field, reason):
    with pytest.raises(RecordError) as err:
        split_record(record)
    assert err.value.field == field and err.value.reason == reason
    assert repr(field) in str(err.value)


def test_deepseek_splitter_same_interface():
    record = {
        "question": "What is 2+3+4?",
        "deepseek_response": "<think>let me think\n**Step 9:** hidden</think>\n"
        "**Step 1:** 2+3 = 5.\n\n**Step 2:** 5+4 = 9.\n\n**Step 3:** So the answer is \\boxed{9}",
    }
    sol = split_record(record, "deepseek")
    assert sol.steps == ["2+3 = 5.", "5+4 = 9.", "So the answer is"]
    assert sol.gold == "9"
    with_gold = split_record(record | {"answer": "x\n#### 9"}, "deepseek")
    assert with_gold.gold == "9"


def test_deepseek_step_that_is_only_an_annotation_is_dropped_not_left_empty():
    """An empty step would make tokenisation fail for the whole file (its span cannot be found)."""
    record = {
        "question": "q",
        "deepseek_response": "**Step 1:** <<2*3=6>>\n**Step 2:** So 6.\n**Step 3:** total \\boxed{6}",
    }
    assert split_record(record, "deepseek").steps == ["So 6.", "total"]
    kept = split_record(record, "deepseek", keep_annotations=True).steps
    assert kept == ["<<2*3=6>>", "So 6.", "total"]


@given(st.lists(st.sampled_from(["<<1+1=2>>", "a", " ", "x <<2=2>>", "\n"]), min_size=1, max_size=6))
def test_no_splitter_returns_an_empty_step(pieces):
    answer = "\n".join(pieces) + "\n#### 2"
    response = "".join(f"**Step {i}:** {p}\n" for i, p in enumerate(pieces, 1)) + "\\boxed{2}"
    for record, fmt in [
        ({"question": "q", "answer": answer}, "gsm8k"),
        ({"question": "q", "deepseek_response": response}, "deepseek"),
    ]:
        for keep in (False, True):
            assert all(step.strip() == step and step for step in split_record(record, fmt, keep).steps)


def test_deepseek_nested_boxed_gold_and_missing_answer():
    record = {"question": "q", "deepseek_response": "**Step 1:** a\n**Step 2:** b \\boxed{\\frac{1}{2}}"}
    assert split_record(record, "deepseek").gold == "\\frac{1}{2}"
    with pytest.raises(RecordError, match="boxed"):
        split_record({"question": "q", "deepseek_response": "**Step 1:** a"}, "deepseek")


line_text = st.text(st.characters(blacklist_categories=["Cs", "Cc", "Zl", "Zp"]), min_size=1, max_size=30).filter(
    lambda s: s.strip() and "####" not in s and "<<" not in s and ">>" not in s and "\x85" not in s
)


@given(st.lists(line_text, min_size=1, max_size=6), st.integers(-1000, 10**6))
def test_gsm8k_roundtrip_property(lines, answer):
    """Any lines before `####` come back as the stripped steps, in order."""
    sol = split_record({"question": "q", "answer": "\n".join(lines) + f"\n#### {answer}"})
    assert sol.steps == [s.strip() for s in lines]
    assert sol.gold == str(answer)
    message = assistant_message(sol.steps, sol.gold, "The final answer is \\boxed{{answer}}.")
    assert message.split("\n\n")[-1] == f"The final answer is \\boxed{{{answer}}}."
