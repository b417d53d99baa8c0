"""The sweep summary, best config and plots."""

import numpy as np

from stepjepa.config import SweepConfig
from stepjepa.report import best_config, markdown_table, plot_heatmap, plot_loss_curves, summarize
from stepjepa.sweep import expand_grid


def fake_results(fail: str | None = None):
    rng = np.random.default_rng(0)
    out = []
    for spec in expand_grid(SweepConfig(ks=[1, 2], lambdas=[0.5, 2.0], seeds=[0, 1])):
        if spec.config_name == fail:
            out.append({"spec": spec.as_dict(), "status": "failed"})
            continue
        p = 0.2 + 0.3 * (spec.config_name == "k2_lam0.5")
        correct = rng.random(300) < p
        out.append({
            "spec": spec.as_dict(), "status": "completed", "correct_strict": correct.tolist(),
            "metrics": {"accuracy_strict": correct.mean(), "accuracy_flexible": correct.mean() + 0.01},
            "history": {"step": [1, 2, 3], "lm_loss": [3.0, 2.5, 2.0]},
        })
    return out


def test_summary_rows_and_best_config():
    rows = summarize(fake_results())
    assert [r["config"] for r in rows][0] == "sft" and len(rows) == 5
    best = best_config(rows)
    assert best["config"] == "k2_lam0.5" and best["vs_sft_verdict"] == "better" and best["vs_sft_ci_low"] > 0
    others = [r for r in rows if r["config"] not in ("sft", "k2_lam0.5")]
    assert all(r["vs_sft_verdict"] == "no significant difference" for r in others)
    table = markdown_table(rows)
    assert table.count("\n") == 6 and "| sft | 0 | 0 | 2/2 |" in table
    compared = [r for r in rows if r["config"] != "sft"]
    assert len(compared) == 4 and all(r["vs_sft_p_value"] <= r["vs_sft_p_holm"] <= 1 for r in compared)
    assert best["vs_sft_p_holm"] == min(1.0, 4 * best["vs_sft_p_value"])  # the smallest p is multiplied by m
    assert f"| {best['vs_sft_p_holm']:.3g} | better |" in table


def test_failed_config_is_reported_not_dropped(tmp_path):
    rows = summarize(fake_results(fail="k1_lam2"))
    failed = next(r for r in rows if r["config"] == "k1_lam2")
    assert failed["completed"] == 0 and "accuracy_strict" not in failed
    assert "failed" in markdown_table(rows)
    assert best_config(rows)["config"] == "k2_lam0.5"
    assert plot_heatmap(rows, tmp_path / "heatmap.png").stat().st_size > 1000


def test_loss_curves_plot(tmp_path):
    assert plot_loss_curves(fake_results(), tmp_path / "loss.png").stat().st_size > 1000
