"""`train.precision: bf16` (autocast) trains like fp32: 50 Step-JEPA steps of the tiny model
(inline layout, cosine loss) follow fp32's LM and JEPA losses step by step.

Tolerances, from measurements (2026-12-07, this setup, 1 torch thread, train.seed 0-4):
the largest per-step LM-loss difference between the bf16 and the fp32 run was 0.06%,
0.20%, 0.07%, 0.07% and 0.44% of the fp32 loss (0.0020 to 0.0144 absolute, the loss going
6.55 -> ~3.0), and of the JEPA loss 0.0005 to 0.0036 absolute. bf16 keeps 8 bits of
mantissa (~0.4% per rounding) and the runs drift apart slowly through the updates, so the
bounds are 2% and 0.01: 4.5x and 2.8x the worst seed. They still notice a real change:
with the weights themselves in bf16 (updates rounded away; seed 0) the LM loss left the 2%
band at step 21 (4.7% at worst), and so did fp32 with a 5% higher learning rate (step 22,
2.2%). The JEPA loss itself is computed in float32 under autocast (tests/method/test_losses.py).
"""

from __future__ import annotations

import pytest

from stepjepa.training.train import train
from tests.support.train import make_config, write_tokenized

LM_REL_TOL = 0.02
JEPA_ABS_TOL = 0.01


@pytest.mark.e2e
def test_bf16_tracks_fp32_for_50_steps(tiny_model_dir, conversations, tmp_path):
    data = write_tokenized(tiny_model_dir, conversations, tmp_path / "train.parquet")  # 200 rows: 25 steps an epoch
    runs = {}
    for precision in ("fp32", "bf16"):
        cfg = make_config(
            tiny_model_dir,
            max_steps=50,
            epochs=2,
            log_every=1,
            k=2,
            layout="inline",
            loss="cosine",
            precision=precision,
            **{"lambda": 0.5},
        )
        runs[precision] = train(cfg, data, tmp_path / precision).history
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert len(fp32) == len(bf16) == 50
    assert fp32[-1]["lm_loss"] < fp32[0]["lm_loss"] - 3.0, "the fp32 run learns (else the comparison says little)"
    for a, b in zip(fp32, bf16):
        assert abs(b["lm_loss"] - a["lm_loss"]) <= LM_REL_TOL * a["lm_loss"], (a["step"], a["lm_loss"], b["lm_loss"])
        assert abs(b["jepa_loss"] - a["jepa_loss"]) <= JEPA_ABS_TOL, (a["step"], a["jepa_loss"], b["jepa_loss"])
