"""benchmarks/bench_real_shape.py kept from rotting: its `--tiny` mode (a tiny Qwen2, the
same code path) runs our SFT and TRL's SFTTrainer, each in its own process, as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.cli
def test_tiny_mode_measures_ours_and_trl_on_the_same_rows(gsm8k_dir, tmp_path) -> None:
    pytest.importorskip("trl")
    out = tmp_path / "real-shape.json"
    command = [
        sys.executable,
        str(ROOT / "benchmarks/bench_real_shape.py"),
        "--tiny",
        "--steps",
        "2",
        "--variants",
        "jepa_inline",
        "trl_sft",
        "--out",
        str(out),
    ]
    env = os.environ | {"PYTHONPATH": str(ROOT), "GSM8K_DIR": str(gsm8k_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["row_tokens"] and len(report["row_tokens"]) == 4
    assert report["max_token_id"] < report["shape"]["vocab_size"]
    ours, trl = report["variants"]
    assert (ours["variant"], trl["variant"]) == ("jepa_inline", "trl_sft")
    assert trl["ids_and_labels_equal_ours"] is True
    for r in (ours, trl):
        assert r["peak_rss_mib"] >= r["above_baseline_mib"] > 0 and len(r["step_s"]) == 2 and r["median_step_s"] > 0
    assert trl["memory_ratio_to_trl"] == trl["time_ratio_to_trl"] == 1.0
