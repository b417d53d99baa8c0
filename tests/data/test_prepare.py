"""The `prepare` stage's library: every record accounted for, bad input named."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjepa.config import DataConfig
from stepjepa.data.prepare import BadRecordError, content_hash, prepare_file, split_validation
from stepjepa.data.sources import fetch_gsm8k

GOOD = {"question": "q?", "answer": "a = 1\nb = 2\n#### 2"}
ONE_STEP = {"question": "q?", "answer": "only step\n#### 2"}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def messy_file(tmp_path):
    return write_lines(
        tmp_path / "train.jsonl",
        [
            json.dumps(GOOD),
            '{"question": "broken", "answer": ',
            json.dumps({"question": "no answer"}),
            json.dumps({"question": "q", "answer": ""}),
            json.dumps(ONE_STEP),
            json.dumps(GOOD),
        ],
    )


def test_every_line_is_accounted_for_with_file_line_and_field(messy_file):
    records, stats = prepare_file(messy_file, "train", DataConfig())
    m = stats.as_dict()
    # Line 6 repeats line 1 exactly: one record, not two (it would be in train and validation).
    assert m["read"] == 6 and m["kept"] == 2 and m["kept_lm_only"] == 1 and m["skipped"] == 4
    assert m["skipped_by_reason"] == {"duplicate": 1, "empty_field": 1, "malformed_json": 1, "missing_field": 1}
    assert f"{messy_file}:2: " in m["skip_examples"][0] and "not valid JSON" in m["skip_examples"][0]
    assert f"{messy_file}:3: field 'answer': missing" in m["skip_examples"][1]
    assert f"{messy_file}:4: field 'answer': is empty" in m["skip_examples"][2]
    assert f"{messy_file}:6: the same record as line 1" in m["skip_examples"][3]
    assert [r["line"] for r in records] == [1, 5]
    assert records[1]["total_steps"] == 1


def test_short_records_can_be_dropped_and_are_counted(messy_file):
    records, stats = prepare_file(messy_file, "train", DataConfig(short_records="drop"))
    assert stats.as_dict()["dropped_short"] == 1 and len(records) == 1


def test_on_error_raise_names_file_line_and_field(messy_file):
    with pytest.raises(BadRecordError, match=rf"{messy_file}:2: field '\(line\)': not valid JSON"):
        prepare_file(messy_file, "train", DataConfig(), on_error="raise")


def test_conversation_layout(tmp_path):
    records, _ = prepare_file(write_lines(tmp_path / "t.jsonl", [json.dumps(GOOD)]), "test", DataConfig())
    (r,) = records
    assert r["id"] == f"test-{content_hash(GOOD)}" and r["gold"] == "2" and r["line"] == 1
    assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
    assert r["messages"][2]["content"] == "a = 1\n\nb = 2\n\nThe final answer is \\boxed{2}."


def test_official_gsm8k_all_records_accounted(gsm8k_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("GSM8K_DIR", str(gsm8k_dir))
    provenance = fetch_gsm8k(DataConfig(), tmp_path / "raw")
    assert provenance["files"]["train"]["lines"] == 7473 and provenance["files"]["test"]["lines"] == 1319
    for split, n in [("train", 7473), ("test", 1319)]:
        records, stats = prepare_file(tmp_path / "raw" / f"{split}.jsonl", split, DataConfig())
        m = stats.as_dict()
        assert m["read"] == n
        assert m["kept"] + m["dropped_short"] + m["skipped"] == n
        assert len(records) == m["kept"]


def test_gsm8k_dir_missing_split_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_text("")
    monkeypatch.setenv("GSM8K_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing test.jsonl"):
        fetch_gsm8k(DataConfig(), tmp_path / "out")


def _raw_records(n):
    return [{"question": f"How many {i}?", "answer": f"a = {i}\nb = {i + 1}\n#### {i + 1}"} for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 40), size=st.integers(1, 10), order=st.randoms(use_true_random=False))
def test_validation_split_is_disjoint_sized_and_independent_of_file_order(tmp_path_factory, n, size, order):
    size = min(size, n - 1)
    raw = _raw_records(n)
    shuffled = raw[:]
    order.shuffle(shuffled)
    folder = tmp_path_factory.mktemp("split")
    splits = []
    for name, lines in [("a", raw), ("b", shuffled)]:
        records, _ = prepare_file(write_lines(folder / f"{name}.jsonl", map(json.dumps, lines)), "train", DataConfig())
        splits.append(split_validation(records, size))
    (train_a, val_a), (train_b, val_b) = splits
    assert len(val_a) == size and len(train_a) == n - size
    assert {r["id"] for r in val_a} == {r["id"] for r in val_b}, "file order changed the validation split"
    assert {r["id"] for r in train_a} == {r["id"] for r in train_b}
    assert not {r["id"] for r in val_a} & {r["id"] for r in train_a}
    assert [r["line"] for r in val_b] == sorted(r["line"] for r in val_b), "each split keeps file order"


def test_validation_split_that_would_leave_no_training_is_an_error(tmp_path):
    records, _ = prepare_file(
        write_lines(tmp_path / "t.jsonl", map(json.dumps, _raw_records(3))), "train", DataConfig()
    )
    with pytest.raises(BadRecordError, match="data.validation_size=3 would leave no training records"):
        split_validation(records, 3)


def test_official_gsm8k_splits_are_disjoint(gsm8k_dir, tmp_path):
    """Train, validation and test ids (and questions) are disjoint on the real data."""
    train, _ = prepare_file(gsm8k_dir / "train.jsonl", "train", DataConfig())
    test, _ = prepare_file(gsm8k_dir / "test.jsonl", "test", DataConfig())
    train, validation = split_validation(train, DataConfig().validation_size)
    ids = [{r["id"] for r in part} for part in (train, validation, test)]
    assert len(ids[1]) == 500 and sum(map(len, ids)) == len(set().union(*ids))
    assert not {r["question"] for r in validation} & {r["question"] for r in train}
