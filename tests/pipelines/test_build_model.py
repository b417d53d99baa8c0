"""The `build_model` stage in-process (its one-line errors, as a process prints them, are in
tests/core/test_cli_errors.py)."""

from __future__ import annotations

import gc
import json
import sys

from pipelines import build_model
from tests.support.collector import paused_collector


def test_a_stage_started_without_the_collector_has_it_back_once_torch_is_in(conversations, tmp_path, monkeypatch):
    """`python -m pipelines.build_model` starts with the cyclic collector off
    (stepjepa/startup.py); with torch and transformers imported, it is on again, frozen."""
    prepared = tmp_path / "train.jsonl"
    prepared.write_text("".join(json.dumps(r) + "\n" for r in conversations[:20]))
    (tmp_path / "params.yaml").write_text("{}\n")
    argv = ["build_model", "--params", str(tmp_path / "params.yaml"), "--prepared", str(prepared)]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "model"), "--metrics", str(tmp_path / "m.json")])
    with paused_collector(monkeypatch) as freezes:
        build_model.main()
        assert gc.isenabled() and freezes == [1]
    assert (tmp_path / "model" / "config.json").is_file()
