"""`stepjepa score`: re-scoring saved completions, and clear errors on bad files."""

from __future__ import annotations

import io
import json
import os
from fractions import Fraction

import pytest

from stepjepa.cli import main as cli_main
from stepjepa.evaluation.score import score_completion, score_file, summarize
from stepjepa.inputs import InputError


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_score_completion_fields():
    row = score_completion(r"3 + 4 = 7 so \boxed{7}", Fraction(7))
    assert row == {
        "gold": "7",
        "extracted_strict": "7",
        "value_strict": "7",
        "correct_strict": True,
        "extracted_flexible": "7",
        "value_flexible": "7",
        "correct_flexible": True,
        "unscorable": False,
    }


def test_summarize_counts_and_accuracies():
    rows = [
        {"completion": r"\boxed{7}", **score_completion(r"\boxed{7}", Fraction(7))},
        {"completion": "it is 7", **score_completion("it is 7", Fraction(7))},
        {"completion": "no idea", **score_completion("no idea", Fraction(7))},
        {"completion": r"\boxed{8}", **score_completion(r"\boxed{8}", Fraction(7))},
    ]
    metrics = summarize(rows)
    assert metrics["n"] == 4
    assert metrics["accuracy_strict"] == 0.25
    assert metrics["accuracy_flexible"] == 0.5
    assert metrics["no_answer_strict"] == 2
    assert metrics["no_answer_flexible"] == 1


def test_cli_prints_one_json_object(tmp_path, capsys):
    path = write_lines(
        tmp_path / "preds.jsonl",
        [
            json.dumps({"completion": r"so \boxed{1,000}", "answer": "It costs 1,000.\n#### 1,000"}),
            json.dumps({"completion": "The answer is $5.00.", "answer": "5"}),
            "",  # blank lines are skipped
            json.dumps({"completion": "#### 0.5", "answer": ".5", "extra": 1}),
        ],
    )
    assert cli_main(["score", str(path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 3
    assert metrics["accuracy_strict"] == pytest.approx(2 / 3)
    assert metrics["accuracy_flexible"] == 1.0


def test_rows_option_writes_rescored_rows(tmp_path, capsys):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"completion": r"\boxed{3}", "answer": "3"})])
    assert cli_main(["score", str(path), "--rows", str(tmp_path / "out" / "rows.jsonl")]) == 0
    row = json.loads((tmp_path / "out" / "rows.jsonl").read_text())
    assert row["correct_strict"] is True


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "empty file"),
        (["", "  "], "empty file"),
        (['{"completion": "x", "answer": "1"}', "{not json"], r"p.jsonl:2: not valid JSON"),
        (["[1, 2]"], r"p.jsonl:1: expected a JSON object"),
        (['{"answer": "1"}'], r"p.jsonl:1: missing field 'completion'"),
        (['{"completion": "x"}'], r"p.jsonl:1: missing field 'answer'"),
        (['{"completion": 3, "answer": "1"}'], r"p.jsonl:1: field 'completion' must be a string"),
        (
            ['{"completion": "x", "answer": "#### lots"}'],
            r"p.jsonl:1: field 'answer': gold answer 'lots' is not a number",
        ),
    ],
)
def test_bad_files_name_file_line_and_field(tmp_path, lines, message):
    path = write_lines(tmp_path / "p.jsonl", lines)
    with pytest.raises(InputError, match=message):
        score_file(path)


def test_numeric_gold_is_accepted(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"completion": r"\boxed{12}", "answer": 12})])
    _, metrics = score_file(path)
    assert metrics["accuracy_strict"] == 1.0


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert cli_main(["score", str(tmp_path / "missing.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "missing.jsonl: no such file" in err
    assert "Traceback" not in err


def test_jsonl_lines_end_at_newline_only(tmp_path):
    """GSM8K text holds U+2028; written with ensure_ascii=False it is a raw character inside
    a JSON string, where `str.splitlines` would cut the line in two."""
    from stepjepa.inputs import read_jsonl, read_records

    records = [
        {"completion": "a\u2028b\x85c\u2029d\x1c\x1d\x1e\x0b\x0c", "answer": "#### 1"},
        {"completion": "x", "answer": "#### 2"},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    assert [(n, r) for n, r in read_jsonl(path)] == [(1, records[0]), (2, records[1])]
    assert read_records(path) == records


# ---- bad input to `stepjepa score` names the line; metrics survive (issue 19) -------


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"completion": r"\boxed{3}", "answer": "3"}).encode() + b"\n")
    _, metrics = score_file(path)
    assert metrics["accuracy_strict"] == 1.0


def test_a_non_utf8_byte_names_its_line_and_column(tmp_path):
    good = json.dumps({"completion": "x", "answer": "1"}).encode()
    path = tmp_path / "p.jsonl"
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"completion": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(InputError, match=r"p.jsonl:3: not valid UTF-8 \(byte 0xe9 at column 20\)"):
        score_file(path)


def test_dash_reads_stdin(tmp_path, monkeypatch, capsys):
    data = json.dumps({"completion": r"\boxed{4}", "answer": "4"}) + "\n"
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    assert cli_main(["score", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy_strict"] == 1.0
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"completion": "1"}\n')))
    assert cli_main(["score", "-"]) == 2
    assert "<stdin>:1: missing field 'answer'" in capsys.readouterr().err


def test_an_unreadable_file_is_one_line(tmp_path, capsys):
    blocker = write_lines(tmp_path / "file.txt", ["x"])
    assert cli_main(["score", str(blocker / "p.jsonl")]) == 2  # a path through a file: not a folder
    err = capsys.readouterr().err
    assert f"{blocker / 'p.jsonl'}: cannot read" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_without_read_permission_is_one_line(tmp_path, capsys):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"completion": "1", "answer": "1"})])
    path.chmod(0)
    assert cli_main(["score", str(path)]) == 2
    assert "cannot read (Permission denied)" in capsys.readouterr().err


def test_an_unwritable_rows_path_keeps_the_metrics(tmp_path, capsys):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"completion": r"\boxed{3}", "answer": "3"})])
    blocker = write_lines(tmp_path / "file.txt", ["x"])
    assert cli_main(["score", str(path), "--rows", str(blocker / "out" / "rows.jsonl")]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["accuracy_strict"] == 1.0  # printed before the rows fail
    assert f"--rows {blocker / 'out' / 'rows.jsonl'}: cannot write" in captured.err


def test_an_absurd_completion_is_counted_not_fatal(tmp_path, capsys):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps({"completion": r"\boxed{10^{5000}}", "answer": "3"}),
            json.dumps({"completion": "it is " + "9" * 4400, "answer": "3"}),
            json.dumps({"completion": r"\boxed{3}", "answer": "3"}),
        ],
    )
    assert cli_main(["score", str(path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert (metrics["n"], metrics["correct_strict"], metrics["unscorable"]) == (3, 1, 2)
