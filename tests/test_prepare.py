"""The `prepare` stage's library: every record accounted for, bad input named."""

import json

import pytest

from stepjepa.config import DataConfig
from stepjepa.prepare import BadRecordError, prepare_file
from stepjepa.sources import fetch_gsm8k

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
    assert m["read"] == 6 and m["kept"] == 3 and m["kept_lm_only"] == 1 and m["skipped"] == 3
    assert m["skipped_by_reason"] == {"empty_field": 1, "malformed_json": 1, "missing_field": 1}
    assert f"{messy_file}:2: " in m["skip_examples"][0] and "not valid JSON" in m["skip_examples"][0]
    assert f"{messy_file}:3: field 'answer': missing" in m["skip_examples"][1]
    assert f"{messy_file}:4: field 'answer': is empty" in m["skip_examples"][2]
    assert [r["line"] for r in records] == [1, 5, 6]
    assert records[1]["total_steps"] == 1


def test_short_records_can_be_dropped_and_are_counted(messy_file):
    records, stats = prepare_file(messy_file, "train", DataConfig(short_records="drop"))
    assert stats.as_dict()["dropped_short"] == 1 and len(records) == 2


def test_on_error_raise_names_file_line_and_field(messy_file):
    with pytest.raises(BadRecordError, match=rf"{messy_file}:2: field '\(line\)': not valid JSON"):
        prepare_file(messy_file, "train", DataConfig(), on_error="raise")


def test_conversation_layout(tmp_path):
    records, _ = prepare_file(write_lines(tmp_path / "t.jsonl", [json.dumps(GOOD)]), "test", DataConfig())
    (r,) = records
    assert r["id"] == "test-000001" and r["gold"] == "2"
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
