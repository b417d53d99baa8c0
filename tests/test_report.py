"""The sweep summary: validation rows over seeds, paired comparisons, selection, the test row, plots."""

from stepjepa.plots import plot_heatmap, plot_loss_curves
from stepjepa.report import best_config, markdown_table, summarize, summary_metrics, compare_on_test
from tests.support.sweep_results import fake_results


def test_summary_rows_and_best_config():
    rows = summarize(fake_results())
    assert [r["config"] for r in rows][0] == "sft" and len(rows) == 5
    best = best_config(rows)
    assert best["config"] == "k2_lam0.5" and best["vs_sft_verdict"] == "better" and best["vs_sft_ci_low"] > 0
    others = [r for r in rows if r["config"] not in ("sft", "k2_lam0.5")]
    assert all(r["vs_sft_verdict"] == "no significant difference" for r in others)
    table = markdown_table(rows).split("\n\n")[0]
    assert table.count("\n") == 6 and "| sft | 0 | 0 | 2/2 |" in table
    compared = [r for r in rows if r["config"] != "sft"]
    assert len(compared) == 4 and all(r["vs_sft_p_value"] <= r["vs_sft_p_holm"] <= 1 for r in compared)
    assert best["vs_sft_p_holm"] == min(1.0, 4 * best["vs_sft_p_value"])  # the smallest p is multiplied by m
    best_line = next(line for line in table.split("\n") if line.startswith("| k2_lam0.5 "))
    assert f"({best['vs_sft_p_holm']:.3g})" in best_line and best_line.endswith("| better |")


def test_seeds_give_mean_std_t_test_and_step2_nll_intervals():
    rows = summarize(fake_results())
    best = next(r for r in rows if r["config"] == "k2_lam0.5")
    assert best["seeds"] == [0, 1] and best["accuracy_strict_std"] > 0
    assert "vs_sft_t" in best and 0 <= best["vs_sft_t_p"] <= best["vs_sft_t_p_holm"] <= 1
    # Step 2 is 0.2 nats better by construction: the interval says so, for the others it covers 0.
    assert best["vs_sft_step2_nll_ci_high"] < 0 < best["vs_sft_step2_nll_delta"] + 0.4
    other = next(r for r in rows if r["config"] == "k1_lam2")
    assert other["vs_sft_step2_nll_ci_low"] < 0 < other["vs_sft_step2_nll_ci_high"]
    text = markdown_table(rows)
    assert " +- " in text and "2 seed(s) per config" in text and "t-test is over seeds" in text


def test_flat_accuracy_is_broken_by_validation_nll():
    rows = summarize(fake_results(same_accuracy=True))
    assert len({r["accuracy_strict"] for r in rows}) == 1
    assert best_config(rows)["config"] == "k2_lam0.5", "the lowest validation NLL wins a tie"


def test_collapsed_views_are_flagged_in_rows_and_table():
    rows = summarize(fake_results(collapse="k1_lam2"))
    flagged = {r["config"] for r in rows if r["warnings"]}
    assert flagged == {"k1_lam2"}
    line = next(line for line in markdown_table(rows).split("\n") if line.startswith("| k1_lam2 "))
    assert "warning:" in line and "view 1 hardly varies" in line
    assert "view 2 varies 20x less across questions than under SFT" in line, "the relative rule against SFT"


def test_failed_config_is_reported_not_dropped(tmp_path):
    rows = summarize(fake_results(fail="k1_lam2"))
    failed = next(r for r in rows if r["config"] == "k1_lam2")
    assert failed["completed"] == 0 and "accuracy_strict" not in failed
    assert "failed" in markdown_table(rows)
    assert best_config(rows)["config"] == "k2_lam0.5"
    assert summary_metrics(rows, best_config(rows))["failed_runs"] == 2
    assert plot_heatmap(rows, tmp_path / "heatmap.png").stat().st_size > 1000


def test_test_row_compares_only_the_champion_with_sft():
    results = fake_results()
    rows = summarize(results)
    best = best_config(rows)
    tested = [r for r in results if r.spec.config_name in ("sft", best["config"])]
    test = compare_on_test(tested, best)
    assert test["config"] == "k2_lam0.5" and test["seeds"] == 2 and test["questions"] == 300
    assert test["champion_accuracy_strict"] > test["sft_accuracy_strict"] and test["vs_sft_ci_low"] > 0
    text = markdown_table(rows, test)
    assert "**Test (read once): k2_lam0.5 vs SFT** on 300 questions, 2 seed(s)" in text
    summary = summary_metrics(rows, best, test)
    assert summary["selected"] == "k2_lam0.5" and summary["beats_sft"] is True
    assert summary["validation"]["accuracy_strict"] > summary["sft"]["accuracy_strict"]
    assert summary["test"]["champion_accuracy_strict"] == round(test["champion_accuracy_strict"], 6)
    columns = sum(len(v) if isinstance(v, dict) else 1 for v in summary.values())
    assert columns <= 16, "dvc metrics show stays one readable table"


def test_loss_curves_plot(tmp_path):
    assert plot_loss_curves(fake_results(), tmp_path / "loss.png").stat().st_size > 1000
