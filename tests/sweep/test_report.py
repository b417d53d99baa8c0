"""The sweep summary: validation rows over seeds, paired comparisons, selection, the test row, plots."""

from stepjepa.sweep.plots import plot_heatmap, plot_loss_curves
from stepjepa.sweep.report import best_config, compare_on_test, markdown_table, summarize, summary_metrics
from tests.support.sweep_results import fake_results


def test_summary_rows_and_best_config():
    rows = summarize(fake_results())
    assert [r["config"] for r in rows][0] == "sft" and len(rows) == 5
    best = best_config(rows)
    # Two seeds: the per-question interval lies above 0 (these models), but the verdict, whose
    # unit is the training run, needs 3 seeds (a paired t-test on 2 has 1 degree of freedom).
    assert (
        best["config"] == "k2_lam0.5"
        and best["vs_sft_verdict"] == "too few seeds to tell"
        and best["vs_sft_ci_low"] > 0
    )
    others = [r for r in rows if r["config"] not in ("sft", "k2_lam0.5")]
    assert all(r["vs_sft_verdict"] == "too few seeds to tell" for r in others)
    table = markdown_table(rows).split("\n\n")[0]
    assert table.count("\n") == 6 and "| sft | 0 | 0 | 2/2 |" in table
    compared = [r for r in rows if r["config"] != "sft"]
    assert len(compared) == 4 and all(r["vs_sft_p_value"] <= r["vs_sft_p_holm"] <= 1 for r in compared)
    assert best["vs_sft_p_holm"] == min(1.0, 4 * best["vs_sft_p_value"])  # the smallest p is multiplied by m
    best_line = next(line for line in table.split("\n") if line.startswith("| k2_lam0.5 "))
    assert f"({best['vs_sft_p_holm']:.3g})" in best_line and best_line.endswith("| too few seeds to tell |")


def test_verdict_is_the_paired_t_test_over_seeds_holm_over_the_sweep():
    rows = summarize(fake_results(seeds=(0, 1, 2, 3)))
    best = best_config(rows)
    assert best["config"] == "k2_lam0.5" and best["vs_sft_verdict"] == "better" and best["vs_sft_paired_seeds"] == 4
    others = [r for r in rows if r["config"] not in ("sft", "k2_lam0.5")]
    assert others and all(r["vs_sft_verdict"] == "no significant difference" for r in others)
    compared = [r for r in rows if r["config"] != "sft"]
    assert all(r["vs_sft_t_p"] <= r["vs_sft_t_p_holm"] <= 1 for r in compared)
    assert best["vs_sft_t_p_holm"] == min(1.0, 4 * best["vs_sft_t_p"])  # the smallest p is multiplied by m
    table = markdown_table(rows)
    best_line = next(line for line in table.split("\n") if line.startswith("| k2_lam0.5 "))
    assert best_line.endswith("| better |") and f"{best['vs_sft_t_p']:.3g} ({best['vs_sft_t_p_holm']:.3g})" in best_line
    assert "verdict (unit: training run)" in table and "models fixed" in table and "at least 3 seeds" in table
    # A failed config stays in the Holm family (p = 1): the family is the sweep, not what survived it.
    failed = summarize(fake_results(seeds=(0, 1, 2, 3), fail="k1_lam2"))
    best = next(r for r in failed if r["config"] == "k2_lam0.5")
    assert best["vs_sft_t_p_holm"] == min(1.0, 4 * best["vs_sft_t_p"]) and best["vs_sft_verdict"] == "better"
    assert "vs_sft_verdict" not in next(r for r in failed if r["config"] == "k1_lam2")


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
    assert " +- " in text and "2 seed(s) per config" in text and "paired t-test of accuracy over seeds" in text
    assert "with 2 seed(s) it is 'too few seeds to tell'" in text


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
    assert "McNemar p" in text and "(per question, models fixed)" in text
    assert (
        "verdict (unit: training run): too few seeds to tell" in text
        and test["vs_sft_verdict"] == "too few seeds to tell"
    )
    summary = summary_metrics(rows, best, test)
    # The champion is 0.3 more accurate on every seed, but 2 seeds cannot tell (the seed-level rule).
    assert summary["selected"] == "k2_lam0.5" and summary["beats_sft"] is False
    assert (
        summary["verdict"] == "too few seeds to tell" and summary["test"]["vs_sft_verdict"] == "too few seeds to tell"
    )
    assert summary["validation"]["accuracy_strict"] > summary["sft"]["accuracy_strict"]
    assert summary["test"]["champion_accuracy_strict"] == round(test["champion_accuracy_strict"], 6)
    columns = sum(len(v) if isinstance(v, dict) else 1 for v in summary.values())
    assert columns <= 16, "dvc metrics show stays one readable table"


def test_enough_seeds_make_the_champion_beat_sft_on_validation_and_test():
    results = fake_results(seeds=(0, 1, 2, 3))
    rows = summarize(results)
    best = best_config(rows)
    test = compare_on_test([r for r in results if r.spec.config_name in ("sft", best["config"])], best)
    assert test["seeds"] == 4 and test["vs_sft_verdict"] == "better" and 0 < test["vs_sft_t_p"] < 0.05
    summary = summary_metrics(rows, best, test)
    assert (
        summary["beats_sft"] is True
        and summary["verdict"] == "better"
        and summary["test"]["vs_sft_verdict"] == "better"
    )
    assert "paired t over seeds p" in markdown_table(rows, test)
    columns = sum(len(v) if isinstance(v, dict) else 1 for v in summary.values())
    assert columns <= 16, "dvc metrics show stays one readable table"


def test_loss_curves_plot(tmp_path):
    assert plot_loss_curves(fake_results(), tmp_path / "loss.png").stat().st_size > 1000


def test_one_factor_at_a_time_compares_each_level_with_the_base_and_sft_holm_over_the_study(tmp_path):
    from stepjepa.stats import holm_adjust, paired_t_interval
    from stepjepa.sweep.plots import plot_effects
    from stepjepa.sweep.report import factor_table
    from tests.support.sweep_results import fake_study

    results = fake_study()
    rows = {r["config"]: r for r in summarize(results)}
    # True effects: K=2 as good as the base, lambda 0.5 and mse worse than it; mse worse than SFT.
    assert rows["k2_lam0.1"]["vs_base_verdict"] == "no significant difference"
    assert rows["k1_lam0.5"]["vs_base_verdict"] == "worse" and rows["k1_lam0.1_loss-mse"]["vs_base_verdict"] == "worse"
    assert rows["k1_lam0.5"]["vs_sft_verdict"] == "no significant difference"
    assert rows["k1_lam0.1"]["factor"] == "base" and "vs_base_verdict" not in rows["k1_lam0.1"]
    # One Holm family: 4 configs against SFT and 3 against the base.
    tests = [(name, vs) for name in rows for vs in ("vs_sft", "vs_base") if f"{vs}_t_p" in rows[name]]
    assert len(tests) == 7
    adjusted = holm_adjust([rows[name][f"{vs}_t_p"] for name, vs in tests])
    assert [rows[name][f"{vs}_t_p_holm"] for name, vs in tests] == adjusted
    # The interval is the t interval of the per-seed paired differences with the base.
    acc = {(r.spec.config_name, r.spec.seed): r.metrics["accuracy_strict"] for r in results}
    mse = [acc["k1_lam0.1_loss-mse", s] for s in range(5)]
    assert (
        rows["k1_lam0.1_loss-mse"]["vs_base_t_ci_low"],
        rows["k1_lam0.1_loss-mse"]["vs_base_t_ci_high"],
    ) == paired_t_interval(mse, [acc["k1_lam0.1", s] for s in range(5)])
    table = factor_table(list(rows.values()))
    assert list(table) == ["k", "lambda", "loss"]
    assert [(lv["level"], lv["row"]["config"], lv["is_base"]) for lv in table["loss"]] == [
        ("infonce", "k1_lam0.1", True),
        ("mse", "k1_lam0.1_loss-mse", False),
    ]
    text = markdown_table(list(rows.values()))
    assert "**One factor at a time around k1_lam0.1**" in text
    line = next(ln for ln in text.splitlines() if ln.startswith("| loss | mse | k1_lam0.1_loss-mse |"))
    assert line.count("| worse |") == 2
    assert plot_effects(list(rows.values()), tmp_path / "effects.png").stat().st_size > 0


def test_a_grid_has_no_factor_table_and_its_effects_plot_shows_each_config_against_sft(tmp_path):
    from stepjepa.sweep.plots import plot_effects
    from stepjepa.sweep.report import factor_markdown

    rows = summarize(fake_results(seeds=(0, 1, 2)))
    assert factor_markdown(rows) == "" and all("factor" not in r for r in rows)
    assert plot_effects(rows, tmp_path / "effects.png").stat().st_size > 0


def _noisy(results, relative: float = 3e-7):
    """The same results as another CPU computes them: every NLL, loss and diagnostic off in
    the 7th digit (issue 32: NLLs differed there, and dvc.lock and metrics/ with them)."""
    from dataclasses import replace

    def off(tree):
        return {k: v * (1 + relative) if isinstance(v, float) and "accuracy" not in k else v for k, v in tree.items()}

    return [
        replace(r, metrics=off(r.metrics), heldout=[off(h) for h in r.heldout], history=[off(h) for h in r.history])
        for r in results
    ]


def test_what_is_written_holds_no_float_noise_from_another_machine(tmp_path):
    from stepjepa.sweep.report import write_plot_data

    written = []
    for results in (fake_results(seeds=(0, 1, 2)), _noisy(fake_results(seeds=(0, 1, 2)))):
        rows = summarize(results)
        best = best_config(rows)
        test = compare_on_test(results, best)
        folder = tmp_path / str(len(written))
        write_plot_data(rows, results, folder)
        files = {p.name: p.read_text() for p in sorted(folder.iterdir())}
        written.append(
            files | {"summary": repr(summary_metrics(rows, best, test)), "table": markdown_table(rows, test)}
        )
    assert written[0] == written[1]
    assert summarize(fake_results())[1]["step2_nll"] != summarize(_noisy(fake_results()))[1]["step2_nll"], (
        "the statistics themselves are exact"
    )
    summary = summary_metrics(summarize(fake_results(seeds=(0, 1, 2))), None)
    assert all(len(str(v).split(".")[-1]) <= 4 for v in summary["sft"].values())
