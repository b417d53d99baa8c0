"""The `tokenize` stage in-process (its one-line errors, as a process prints them, are in
tests/core/test_cli_errors.py)."""

from __future__ import annotations

import gc
import json
import sys

import yaml

from pipelines import tokenize_data
from tests.support.collector import paused_collector


def test_a_stage_started_without_the_collector_has_it_back_once_the_tokenizer_is_in(
    tiny_model_dir, conversations, tmp_path, monkeypatch
):
    """`python -m pipelines.tokenize_data` starts with the cyclic collector off
    (stepjepa/startup.py); with transformers imported, it is on again, the imports frozen."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in ("train", "validation", "test"):
        (prepared / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conversations[:4]))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)}}))
    argv = ["tokenize_data", "--params", str(params), "--prepared", str(prepared)]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "m.json")])
    with paused_collector(monkeypatch) as freezes:
        tokenize_data.main()
        assert gc.isenabled() and freezes == [1]
    assert json.loads((tmp_path / "m.json").read_text())["train"]["count"] == 4
