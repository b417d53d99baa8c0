"""`stepjepa inspect` on a real tokenised row: JSON keys, text grid, PNG, same path as training."""

from __future__ import annotations

import gc
import json
import re

import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoTokenizer

from stepjepa.config import ConfigError, config_from_dict
from stepjepa.data.tokenization import encode_records
from stepjepa.method import layout_view
from stepjepa.method.collate import collate
from stepjepa.vocabulary import INLINE_UA
from tests.support.collector import paused_collector

KEYS = {
    "layout",
    "k",
    "steps",
    "tokens",
    "input_ids",
    "labels",
    "position_ids",
    "attention",
    "view1_index",
    "view2_index",
    "step1_span",
    "step2_span",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_model_dir, conversations):
    out = tmp_path_factory.mktemp("inspect")
    records = conversations[:4]
    table = encode_records(AutoTokenizer.from_pretrained(tiny_model_dir), records, 512, "26 Jul 2024")
    pq.write_table(table, out / "train.parquet")
    (out / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return out, table.to_pylist()


def args(out, model_dir, *extra: str) -> list[str]:
    return [
        "--params",
        str(out / "none.yaml"),
        "--data",
        str(out / "train.parquet"),
        "--prepared",
        str(out / "train.jsonl"),
        "--model-dir",
        str(model_dir),
        *extra,
    ]


@pytest.mark.parametrize("layout", ["inline", "packed"])
def test_json_is_the_training_batch(files, tiny_model_dir, capsys, layout) -> None:
    out, rows = files
    assert layout_view.main(args(out, tiny_model_dir, "--index", "1", "--k", "2", "--layout", layout, "--json")) == 0
    rec = json.loads(capsys.readouterr().out)
    assert KEYS <= rec.keys() and rec["layout"] == layout and rec["k"] == 2
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = layout_view.predictor_ids(tok, 2)
    batch = collate([rows[1]], k=2, layout=layout, predictor_ids=ids, pad_id=tok.pad_token_id)
    assert rec["input_ids"] == batch["input_ids"][0].tolist() and rec["labels"] == batch["labels"][0].tolist()
    assert rec["position_ids"] == batch["position_ids"][0].tolist()
    assert torch.equal(torch.tensor(rec["attention"], dtype=torch.bool), batch["attention_mask"][0, 0])
    assert rec["input_ids"][rec["view1_index"]] == ids[-1]
    a2, e2 = rec["step2_span"]
    s2 = rows[1]["step2_span"]
    assert rec["input_ids"][a2 : e2 + 1] == rows[1]["input_ids"][s2[0] : s2[1] + 1] and rec["view2_index"] == e2
    assert rec["steps"] == json.loads((out / "train.jsonl").read_text().splitlines()[1])["steps"]
    assert "".join(rec["tokens"][rec["step1_span"][0] : rec["step1_span"][1] + 1]).strip() == rec["steps"][0]


def test_text_grid_and_png_for_k_1_2_3(files, tiny_model_dir, capsys, tmp_path) -> None:
    out, _ = files
    png = tmp_path / "mask.png"
    assert layout_view.main(args(out, tiny_model_dir, "--id", "train-000001", "--png", str(png))) == 0
    text = capsys.readouterr().out
    assert [f"K={k}" in text for k in (1, 2, 3)] == [True] * 3
    assert text.count("<- view 1") == 3 and text.count("<- view 2") == 3 and "<|predictor_3|>" in text
    assert png.stat().st_size > 1000


def test_bad_arguments(files, tiny_model_dir) -> None:
    out, _ = files
    for bad in (["--k", "-1"], ["--layout", "inlined"], ["--json", "--k", "1", "--k", "2"]):
        with pytest.raises(SystemExit):
            layout_view.main(args(out, tiny_model_dir, *bad))
    assert (
        layout_view.main(args(out, tiny_model_dir, "--id", "nope")) == 2
    )  # a clean error (tests/core/test_cli_errors.py)


def test_both_view_pairs_side_by_side_as_json_lines(files, tiny_model_dir, capsys) -> None:
    out, rows = files
    extra = (
        "--index",
        "1",
        "--k",
        "2",
        "--layout",
        "packed",
        "--json",
        "--views",
        "steps",
        "--views",
        "user_assistant",
    )
    assert layout_view.main(args(out, tiny_model_dir, *extra)) == 0
    steps, ua = map(json.loads, capsys.readouterr().out.splitlines())
    assert (steps["views"], ua["views"]) == ("steps", "user_assistant") and steps.keys() == ua.keys() >= KEYS
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = layout_view.predictor_ids(tok, 2)
    batch = collate([rows[1]], k=2, layout="packed", predictor_ids=ids, pad_id=tok.pad_token_id, views="user_assistant")
    assert ua["input_ids"] == batch["input_ids"][0].tolist() and ua["labels"] == batch["labels"][0].tolist()
    assert ua["position_ids"] == batch["position_ids"][0].tolist()
    assert torch.equal(torch.tensor(ua["attention"], dtype=torch.bool), batch["attention_mask"][0, 0])
    u_end, (a0, a_end) = rows[1]["user_span"][1], rows[1]["assistant_span"]
    assert ua["step1_span"] == [0, u_end] and ua["input_ids"][ua["view1_index"]] == ids[-1]
    assert ua["input_ids"][ua["step2_span"][0] : ua["view2_index"] + 1] == rows[1]["input_ids"][a0 : a_end + 1]
    assert ua["tokens"][ua["view2_index"]] == "<|im_end|>", "view 2 is the end of the assistant message"
    assert {"user", "pred", "assistant", "copy"} <= set(ua["segments"]) and "step1" not in ua["segments"]


def test_text_and_png_of_both_pairs_side_by_side(files, tiny_model_dir, capsys, tmp_path) -> None:
    out, _ = files
    png = tmp_path / "pairs.png"
    extra = (
        "--id",
        "train-000001",
        "--k",
        "1",
        "--layout",
        "two_pass",
        "--views",
        "steps",
        "--views",
        "user_assistant",
        "--png",
        str(png),
    )
    assert layout_view.main(args(out, tiny_model_dir, *extra)) == 0
    text = capsys.readouterr().out
    assert "views=steps  layout=two_pass" in text and "views=user_assistant  layout=two_pass" in text
    assert text.count("<- view 1") == 2 and text.count("<- view 2") == 2
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("extra", [("--layout", "inline"), ()], ids=["asked", "default"])
def test_the_pair_training_refuses_is_refused_with_its_message(files, tiny_model_dir, capsys, extra) -> None:
    """Issue 33: `--layout inline --views user_assistant` showed two_pass under exit 0. What is
    asked for is laid out, or refused with the line training refuses it with."""
    out, _ = files
    assert layout_view.main(args(out, tiny_model_dir, "--k", "1", "--json", "--views", "user_assistant", *extra)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"stepjepa inspect: error: {INLINE_UA}\n"
    with pytest.raises(ConfigError, match=re.escape(INLINE_UA)):  # the very line `stepjepa train` gives
        config_from_dict({"train": {"layout": "inline", "views": "user_assistant"}})


def test_data_without_the_pair_columns_is_a_clean_error(files, tiny_model_dir, capsys, tmp_path) -> None:
    out, _ = files
    table = pq.read_table(out / "train.parquet")
    old = tmp_path / "old.parquet"
    pq.write_table(table.drop_columns(["user_span", "assistant_span", "ua_valid", "ua_invalid_reason"]), old)
    argv = args(out, tiny_model_dir, "--views", "user_assistant")
    argv[argv.index("--data") + 1] = str(old)
    assert layout_view.main(argv) == 2
    assert "--views user_assistant: --data has no ua_valid column" in capsys.readouterr().err


def test_mask_png_names_segments_views_and_colours(files, tiny_model_dir) -> None:
    out, rows = files
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [
        layout_view.lay_out(rows[1], tok, 2, "packed", None),
        layout_view.lay_out(rows[1], tok, 0, "inline", None),
    ]
    fig = layout_view.mask_figure(records)
    packed, plain = fig.axes[:2]
    ticks = [t.get_text() for t in packed.get_xticklabels()]
    assert ticks == ["prompt", "Step 1", "Step 2", "rest", "predictors", "copy of Step 2 / the assistant turn (packed)"]
    assert ticks == [t.get_text() for t in packed.get_yticklabels()]
    assert len(packed.lines) == len(ticks) - 1 + len(ticks) - 1 + 2, "a boundary line per segment change, two views"
    legend = [t.get_text() for t in packed.get_legend().get_texts()]
    assert legend == [
        f"view 1: last predictor (query row {records[0]['view1_index']})",
        f"view 2: end of Step 2 (query row {records[0]['view2_index']})",
    ]
    assert plain.get_legend().get_texts()[0].get_text().startswith("view 1: end of Step 1")
    assert all("black = may attend, white = masked" in ax.get_title() for ax in (packed, plain))


def test_a_process_started_without_the_collector_has_it_back_once_the_tokenizer_is_in(
    files, tiny_model_dir, capsys, monkeypatch
) -> None:
    """`stepjepa inspect` starts with the cyclic collector off (stepjepa/startup.py); with
    transformers imported, it is on again for the rest of the command, the imports frozen."""
    out, _ = files
    with paused_collector(monkeypatch) as freezes:
        assert layout_view.main(args(out, tiny_model_dir, "--k", "1")) == 0
        assert gc.isenabled() and freezes == [1]
