"""The sweep summary: per-config validation results over seeds, paired comparisons with the
SFT baseline, the selected config, the one test comparison, and the markdown table.

The protocol a reviewer expects: every config is scored on the **validation** split; the
champion is the config with the highest mean validation accuracy (ties: the lower mean
validation NLL, then the smaller K and lambda); only the champion and SFT are scored on
**test**, once. Next to accuracy, which a small model may leave flat, each config gets the
held-out NLL of the answers and of Step 2 given Step 1 (per example, paired with SFT, with a
bootstrap interval), the JEPA view diagnostics and collapse warnings, and across seeds the
mean +- std.

The verdict against SFT ("better", "worse", "no significant difference", "too few seeds to
tell"; `beats_sft` in summary.json and the registry) has the training run as its unit: a
two-sided paired t-test of per-seed accuracy, Holm over all configs of the sweep, alpha 0.05,
at least 3 seeds (`stats.seed_verdicts` says why). The per-question interval and McNemar's
test are reported next to it, labelled as what they are: conditional on these trained models.

A one-at-a-time sweep (`sweep.design: one_at_a_time`) also compares every config with the
base config it varies one factor of (`vs_base_*`: the same seed-level test and a t interval
over the per-seed paired differences), in one Holm family with the comparisons with SFT:
the study's whole family of claims. `factor_table` and `plots.plot_effects` show them, and
`verdict_records` (verdicts.json) holds every comparison for `stepjepa compare`.

A run's result is a `stepjepa.sweep.specs.RunResult`: its spec, status and, when completed, what
`read_run_result` (or `tracking.run_result`) reads of its evaluation and training.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from stepjepa.stats import (
    MIN_SEEDS,
    SELECTION_RULE,
    TOO_FEW_SEEDS,
    VERDICT_RULE,
    beats_sft,
    holm_adjust,
    mean_std,
    paired_bootstrap,
    paired_mean_bootstrap,
    paired_t_interval,
    reported,
    seed_verdicts,
)
from stepjepa.sweep.specs import RunResult
from stepjepa.vocabulary import SFT

METRIC = "accuracy_strict"
DIAGNOSTICS = ("mean_cos", "rank_view1", "rank_view2", "spread_view1", "spread_view2", "jepa_loss")


def read_eval_folder(folder: Path) -> dict[str, Any]:
    """An evaluation folder's metrics, per-question strict correctness and per-example NLL."""
    metrics = json.loads((folder / "metrics.json").read_text())
    correct = [bool(json.loads(line)["correct_strict"]) for line in _lines(folder / "predictions.jsonl")]
    heldout = (
        [json.loads(line) for line in _lines(folder / "heldout.jsonl")] if (folder / "heldout.jsonl").is_file() else []
    )
    return {"metrics": metrics, "correct_strict": correct, "heldout": heldout}


def read_run_result(run_dir: Path, eval_dir: Path) -> dict[str, Any]:
    """What the summary needs of one run's evaluation in `eval_dir` (`specs.eval_folder`: one
    split with one setting), plus the run's training history."""
    history = (
        [json.loads(line) for line in _lines(run_dir / "metrics.jsonl")]
        if (run_dir / "metrics.jsonl").is_file()
        else []
    )
    return read_eval_folder(eval_dir) | {"history": history}


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _by_config(results: list[RunResult]) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        groups[r.spec.config_name].append(r)
    return groups


def _per_seed(runs: list[RunResult], seeds: list[int], values) -> np.ndarray:
    by_seed = {r.spec.seed: r for r in runs}
    return np.array([values(by_seed[s]) for s in seeds], dtype=float)


def _step2(run: RunResult) -> list[float]:
    return [np.nan if h.get("step2_nll") is None else h["step2_nll"] for h in run.heldout]


def _diagnostics(run: RunResult | None) -> dict | None:
    if run is None:
        return None
    return {k: run.metrics[k] for k in (*DIAGNOSTICS, "n_pairs") if run.metrics.get(k) is not None} or None


def _warnings(run: RunResult, baseline: RunResult | None) -> list[str]:
    """Collapse warnings of one run: absolute, from its history, and against its seed's SFT run."""
    from stepjepa.method.diagnostics import collapse_warnings, relative_collapse_warnings

    if run.spec.config_name == SFT:
        return []
    diag = _diagnostics(run)
    return collapse_warnings(diag, run.history) + relative_collapse_warnings(diag, _diagnostics(baseline))


def _seed_stats(row: dict, done: list[RunResult]) -> None:
    for key in (METRIC, "accuracy_flexible", "nll", "step2_nll", *DIAGNOSTICS):
        values = [r.metrics[key] for r in done if r.metrics.get(key) is not None]
        if values:
            row[key], row[f"{key}_std"] = mean_std(values)


def _compare(row: dict, done: list[RunResult], base: dict[int, RunResult]) -> tuple[np.ndarray, np.ndarray]:
    """Per-question comparisons with SFT on the seeds both completed (models fixed); returns
    the per-seed accuracies of the config and of SFT, paired by seed, for the verdict."""
    seeds = sorted(s for s in (r.spec.seed for r in done) if s in base)
    if not seeds:
        return np.empty(0), np.empty(0)
    mine, theirs = [r for r in done if r.spec.seed in seeds], list(base.values())
    acc = paired_bootstrap(
        _per_seed(mine, seeds, lambda r: r.correct_strict), _per_seed(theirs, seeds, lambda r: r.correct_strict)
    )
    row |= {f"vs_sft_{k}": v for k, v in acc.as_dict().items()}
    if all(r.heldout for r in mine + theirs):
        a, b = _per_seed(mine, seeds, _step2).mean(axis=0), _per_seed(theirs, seeds, _step2).mean(axis=0)
        keep = ~(np.isnan(a) | np.isnan(b))
        if keep.any():
            nll = paired_mean_bootstrap(a[keep], b[keep])
            row |= {
                "vs_sft_step2_nll_delta": nll["delta"],
                "vs_sft_step2_nll_ci_low": nll["ci_low"],
                "vs_sft_step2_nll_ci_high": nll["ci_high"],
                "vs_sft_step2_nll_n": nll["n"],
            }
    return (_per_seed(mine, seeds, lambda r: r.metrics[METRIC]), _per_seed(theirs, seeds, lambda r: r.metrics[METRIC]))


def _verdicts(rows: list[dict], pairs: dict[tuple[str, str], tuple]) -> None:
    """The seed-level verdict of every (config, against) comparison, `against` "sft" or
    "base", Holm over all of them (failed ones count, p = 1), and each one's t interval."""
    by_name = {r["config"]: r for r in rows}
    for (name, against), cmp in zip(pairs, seed_verdicts(list(pairs.values())), strict=True):
        row, vs = by_name[name], f"vs_{against}"
        if cmp.n_seeds == 0:  # failed, or no SFT (base) seed to pair with
            continue
        row |= {f"{vs}_verdict": cmp.verdict, f"{vs}_paired_seeds": cmp.n_seeds, f"{vs}_t_delta": cmp.delta}
        if cmp.n_seeds >= 2:
            low, high = paired_t_interval(*pairs[name, against])
            row |= {
                f"{vs}_t": cmp.t,
                f"{vs}_t_p": cmp.p_value,
                f"{vs}_t_p_holm": cmp.p_holm,
                f"{vs}_t_ci_low": low,
                f"{vs}_t_ci_high": high,
            }


def _setting(spec, key: str):
    return dict(spec.overrides)[f"train.{key}"]


def _against_base(rows: list[dict], groups: dict[str, list[RunResult]], pairs: dict) -> None:
    """One factor at a time: each config's level of its factor and the base's, and its per-seed
    accuracies paired with the base config's (seeds both completed)."""
    from stepjepa.sweep.specs import axis_text

    base_name = next((name for name, runs in groups.items() if runs[0].spec.factor == "base"), None)
    if base_name is None:
        return
    base_spec = groups[base_name][0].spec
    base = {r.spec.seed: r for r in groups[base_name] if r.completed}
    for row in rows:
        spec = groups[row["config"]][0].spec
        row["factor"] = spec.factor
        if row["factor"] in (None, "base"):
            continue
        row["level"] = axis_text(_setting(spec, row["factor"]))
        row["base_level"] = axis_text(_setting(base_spec, row["factor"]))
        row["base_config"] = base_name
        done = {r.spec.seed: r for r in groups[row["config"]] if r.completed}
        seeds = sorted(done.keys() & base.keys())
        pairs[row["config"], "base"] = (
            np.array([done[s].metrics[METRIC] for s in seeds], dtype=float),
            np.array([base[s].metrics[METRIC] for s in seeds], dtype=float),
        )


def summarize(results: list[RunResult]) -> list[dict[str, Any]]:
    """One row per config, baseline first (validation results)."""
    groups = _by_config(results)
    base = {r.spec.seed: r for r in groups.get(SFT, []) if r.completed}
    rows, pairs = [], {}
    for name, runs in sorted(groups.items(), key=lambda kv: (kv[0] != SFT, kv[0])):
        done = [r for r in runs if r.completed]
        spec = runs[0].spec
        row = {
            "config": name,
            "views": spec.views,
            "k": spec.k,
            "lambda": spec.lam,
            "runs": len(runs),
            "completed": len(done),
            "seeds": sorted(r.spec.seed for r in done),
        }
        if done:
            _seed_stats(row, done)
            row["questions"] = len(done[0].correct_strict)
            if name != SFT:
                pairs[name, SFT] = _compare(row, done, base)
            row["warnings"] = sorted({w for r in done for w in _warnings(r, base.get(r.spec.seed))})
        if name != SFT and not done:
            pairs[name, SFT] = (np.empty(0), np.empty(0))
        rows.append(row)
    _against_base(rows, groups, pairs)
    compared = [r for r in rows if "vs_sft_p_value" in r]
    for row, adjusted in zip(compared, holm_adjust([r["vs_sft_p_value"] for r in compared]), strict=True):
        row["vs_sft_p_holm"] = adjusted
    _verdicts(rows, pairs)
    return rows


def best_config(rows: list[dict]) -> dict | None:
    """Highest mean validation strict accuracy; ties: lower validation NLL, then smaller K, lambda."""
    done = [r for r in rows if METRIC in r]
    if not done:
        return None
    return min(done, key=lambda r: (-r[METRIC], r.get("nll", np.inf), r["k"], r["lambda"], r["views"] != "steps"))


def champion_run(results: list[RunResult], best: dict) -> RunResult:
    """The best config's run to register: its most accurate seed (ties: lower NLL, lower seed)."""
    runs = [r for r in results if r.spec.config_name == best["config"] and r.completed]
    return min(runs, key=lambda r: (-r.metrics[METRIC], r.metrics.get("nll", np.inf), r.spec.seed))


def versus_champion(results: list[RunResult], candidate: str, champion: str) -> dict[str, Any] | None:
    """The sweep's selected config against the registered champion's config, both trained and
    evaluated in this sweep (so on the same validation questions), per-seed accuracy paired by
    seed: the seed-level verdict of `stats.seed_verdicts`. The candidate was chosen among the
    sweep's configs after seeing these numbers, so the family Holm adjusts over is every config
    against the champion's, as the verdicts against SFT are. None when the champion's config
    completed no seed here (nothing to compare on)."""
    groups = _by_config(results)
    base = {r.spec.seed: r for r in groups.get(champion, []) if r.completed}
    if not base or candidate == champion:
        return None
    pairs, seeds = {}, {}
    for name, runs in groups.items():
        if name == champion:
            continue
        done = {r.spec.seed: r for r in runs if r.completed}
        seeds[name] = sorted(done.keys() & base.keys())
        pairs[name] = (
            np.array([done[s].metrics[METRIC] for s in seeds[name]], dtype=float),
            np.array([base[s].metrics[METRIC] for s in seeds[name]], dtype=float),
        )
    cmp = dict(zip(pairs, seed_verdicts(list(pairs.values())), strict=True))[candidate]
    return {
        "candidate": candidate,
        "champion_config": champion,
        "split": "validation",
        "seeds": seeds[candidate],
        "questions": len(next(iter(base.values())).correct_strict),
        "delta": cmp.delta,
        "p_value": cmp.p_value,
        "p_holm": cmp.p_holm,
        "family": len(pairs),
        "verdict": cmp.verdict,
    }


def compare_on_test(tested: list[RunResult], best: dict) -> dict[str, Any] | None:
    """The champion against SFT on the test split (the only test numbers a sweep reports):
    the per-question interval and McNemar (these trained models fixed) and the verdict with
    the training run as unit (the paired t-test over seeds; one comparison, chosen on
    validation, so nothing to adjust for)."""
    done = [r for r in tested if r.completed]
    champ = {r.spec.seed: r for r in done if r.spec.config_name == best["config"]}
    sft = {r.spec.seed: r for r in done if r.spec.config_name == SFT}
    seeds = sorted(champ.keys() & sft.keys())
    if not seeds:
        return None
    out: dict[str, Any] = {
        "config": best["config"],
        "seeds": len(seeds),
        "questions": len(sft[seeds[0]].correct_strict),
    }
    for name, runs in (("champion", champ), (SFT, sft)):
        out[f"{name}_{METRIC}"] = float(np.mean([runs[s].metrics[METRIC] for s in seeds]))
        out[f"{name}_nll"] = float(np.mean([runs[s].metrics.get("nll", np.nan) for s in seeds]))
    if best["config"] != SFT:
        cmp = paired_bootstrap(
            np.array([champ[s].correct_strict for s in seeds]), np.array([sft[s].correct_strict for s in seeds])
        )
        out |= {f"vs_sft_{k}": v for k, v in cmp.as_dict().items() if k not in ("n_questions", "n_seeds")}
        (over_seeds,) = seed_verdicts(
            [(np.array([champ[s].metrics[METRIC] for s in seeds]), np.array([sft[s].metrics[METRIC] for s in seeds]))]
        )
        out["vs_sft_verdict"] = over_seeds.verdict
        if len(seeds) >= 2:
            out |= {"vs_sft_t": over_seeds.t, "vs_sft_t_p": over_seeds.p_value}
    return out


def _fmt(row: dict, key: str, digits: int = 3) -> str:
    if key not in row or row[key] is None:
        return ""
    std = row.get(f"{key}_std")
    return f"{row[key]:.{digits}f}" + (f" +- {std:.{digits}f}" if std and len(row.get("seeds", [])) > 1 else "")


def _interval(row: dict, prefix: str) -> str:
    if f"{prefix}_delta" not in row:
        return ""
    return f"{row[f'{prefix}_delta']:+.3f} [{row[f'{prefix}_ci_low']:+.3f}, {row[f'{prefix}_ci_high']:+.3f}]"


def factor_table(rows: list[dict]) -> dict[str, list[dict]]:
    """One factor at a time: `{factor: [{"level", "row", "is_base"}, ...]}`, the base config's
    level first, then each other level; the sweep's own factors first, then the axes by name;
    {} for a grid."""
    base = next((r for r in rows if r.get("factor") == "base"), None)
    table: dict[str, list[dict]] = {}
    fixed = ("k", "lambda", "views")
    for row in sorted(
        rows, key=lambda r: (fixed.index(r["factor"]) if r.get("factor") in fixed else 3, str(r.get("factor")))
    ):
        if base is not None and row.get("factor") not in (None, "base"):
            levels = table.setdefault(row["factor"], [{"level": row["base_level"], "row": base, "is_base": True}])
            levels.append({"level": row["level"], "row": row, "is_base": False})
    return table


def _t_interval(row: dict, vs: str) -> str:
    if f"{vs}_t_ci_low" not in row:
        return f"{row[f'{vs}_t_delta']:+.3f}" if f"{vs}_t_delta" in row else ""
    return f"{row[f'{vs}_t_delta']:+.3f} [{row[f'{vs}_t_ci_low']:+.3f}, {row[f'{vs}_t_ci_high']:+.3f}]"


def _t_p(row: dict, vs: str) -> str:
    return f"{row[f'{vs}_t_p']:.3g} ({row[f'{vs}_t_p_holm']:.3g})" if f"{vs}_t_p" in row else ""


def factor_markdown(rows: list[dict]) -> str:
    """The per-factor table of a one-at-a-time sweep: each level against the base config and
    against SFT, with seed-level intervals and Holm over the whole study; "" for a grid."""
    table = factor_table(rows)
    if not table:
        return ""
    base = table[next(iter(table))][0]["row"]
    lines = [
        f"**One factor at a time around {base['config']}**: each level against the base config and against SFT. "
        "Deltas are mean paired differences of validation accuracy over seeds with their 95% t interval "
        "(unit: training run); p is the two-sided paired t-test, Holm over every comparison of the study "
        "(against SFT and against the base).",
        "",
        "| factor | value | config | seeds | val acc | delta vs base [95% t interval over seeds] | p vs base (Holm) "
        "| verdict vs base | delta vs SFT [95% t interval over seeds] | p vs SFT (Holm) | verdict vs SFT |",
        "|" + "---|" * 11,
    ]
    for factor, levels in table.items():
        for level in levels:
            r = level["row"]
            if METRIC not in r:
                lines.append(f"| {factor} | {level['level']} | {r['config']} | 0/{r['runs']} | failed |" + " |" * 6)
                continue
            vs_base = (
                ("(base)", "", "")
                if level["is_base"]
                else (_t_interval(r, "vs_base"), _t_p(r, "vs_base"), r.get("vs_base_verdict", ""))
            )
            lines.append(
                f"| {factor} | {level['level']} | {r['config']} | {r['completed']}/{r['runs']} | {_fmt(r, METRIC)} "
                f"| {' | '.join(vs_base)} | {_t_interval(r, 'vs_sft')} | {_t_p(r, 'vs_sft')} "
                f"| {r.get('vs_sft_verdict', '')} |"
            )
    return "\n".join(lines)


def markdown_table(rows: list[dict], test: dict | None = None) -> str:
    """The validation table, the test row (champion vs SFT only) and a sentence on what the
    claims rest on. The verdict column is the seed-level one (unit: training run); the
    per-question columns say they hold the trained models fixed."""
    head = (
        "| config | K | lambda | seeds | val acc | delta acc vs SFT [95% CI per question, models fixed] "
        "| McNemar p (Holm), per question, models fixed | val NLL | val Step-2 NLL "
        "| delta Step-2 NLL vs SFT [95% CI per question, models fixed] | paired t over seeds, two-sided p (Holm) "
        "| mean cos | rank v1 / v2 | verdict (unit: training run) |"
    )
    pairs = any(r["views"] != "steps" for r in rows)  # a views column only when the sweep compares pairs
    if pairs:
        head = head.replace("| config |", "| config | views |")
    lines = [head, "|" + "---|" * (15 if pairs else 14)]
    for r in rows:
        views = "" if not pairs else (" - |" if r["config"] == SFT else f" {r['views']} |")
        if METRIC not in r:
            lines.append(f"| {r['config']} |{views} {r['k']} | {r['lambda']:g} | 0/{r['runs']} | failed |" + " |" * 9)
            continue
        p = f"{r['vs_sft_p_value']:.3g} ({r['vs_sft_p_holm']:.3g})" if "vs_sft_p_value" in r else ""
        t = f"{r['vs_sft_t_p']:.3g} ({r['vs_sft_t_p_holm']:.3g})" if "vs_sft_t_p" in r else ""
        ranks = f"{r['rank_view1']:.1f} / {r['rank_view2']:.1f}" if "rank_view1" in r else ""
        verdict = "baseline" if r["config"] == SFT else r.get("vs_sft_verdict", "")
        if r.get("warnings"):
            verdict += " (warning: " + "; ".join(r["warnings"]) + ")"
        lines.append(
            f"| {r['config']} |{views} {r['k']} | {r['lambda']:g} | {r['completed']}/{r['runs']} | {_fmt(r, METRIC)} "
            f"| {_interval(r, 'vs_sft')} | {p} | {_fmt(r, 'nll')} | {_fmt(r, 'step2_nll')} "
            f"| {_interval(r, 'vs_sft_step2_nll')} | {t} | {_fmt(r, 'mean_cos')} | {ranks} | {verdict} |"
        )
    text = "\n".join(lines)
    done = [r for r in rows if METRIC in r]
    if done:
        seeds, questions = max(len(r["seeds"]) for r in done), done[0]["questions"]
        text += (
            f"\n\nValidation: {questions} questions, {seeds} seed(s) per config. Selection: {SELECTION_RULE}. "
            f"Verdict: {VERDICT_RULE}"
            + (f"; with {seeds} seed(s) it is '{TOO_FEW_SEEDS}' (set sweep.seeds)" if seeds < MIN_SEEDS else "")
            + ". Intervals and McNemar resample questions (paired with SFT, seeds averaged) and hold the "
            "trained models fixed: they leave out the variance between training runs and decide no verdict."
        )
    if test:
        delta = _interval(test, "vs_sft") or "(the champion is SFT)"
        p = f", McNemar p {test['vs_sft_p_value']:.3g} (per question, models fixed)" if "vs_sft_p_value" in test else ""
        t = f"; paired t over seeds p {test['vs_sft_t_p']:.3g}" if "vs_sft_t_p" in test else ""
        verdict = f"{t}; verdict (unit: training run): {test['vs_sft_verdict']}" if "vs_sft_verdict" in test else ""
        text += (
            f"\n\n**Test (read once): {test['config']} vs SFT** on {test['questions']} questions, "
            f"{test['seeds']} seed(s): accuracy {test['champion_accuracy_strict']:.3f} vs "
            f"{test['sft_accuracy_strict']:.3f}, delta {delta}{p}{verdict}."
        )
    factors = factor_markdown(rows)
    return text + (f"\n\n{factors}" if factors else "")


def summary_metrics(rows: list[dict], best: dict | None, test: dict | None = None) -> dict[str, Any]:
    """The sweep's metrics file (`dvc metrics show`): the selection, its validation numbers
    next to SFT's, and the test comparison; a dozen columns, nothing that differs between
    machines. `beats_sft` and `verdict` are the selected config's seed-level verdict on
    validation (`VERDICT_RULE`). Every config's numbers are in table.md, accuracy.json and
    verdicts.json (`verdict_records`)."""
    keep = (METRIC, "step2_nll", "vs_sft_delta", "vs_sft_step2_nll_delta")
    pick = {r["config"]: {k: reported(k, float(r[k])) for k in keep if r.get(k) is not None} for r in rows}
    out: dict[str, Any] = {"configs": len(rows), "failed_runs": sum(r["runs"] - r["completed"] for r in rows)}
    if SFT in pick:
        out[SFT] = pick[SFT]
    if best is not None:
        out |= {
            "selected": best["config"],
            "beats_sft": beats_sft(best),
            "verdict": "baseline" if best["config"] == SFT else best.get("vs_sft_verdict", ""),
            "validation": pick[best["config"]],
        }
    if test:
        out["test"] = {
            k: reported(k, v)
            for k, v in test.items()
            if k
            in ("champion_accuracy_strict", "sft_accuracy_strict", "vs_sft_delta", "vs_sft_p_value", "vs_sft_verdict")
        }
    return out


def verdict_records(rows: list[dict]) -> list[dict[str, Any]]:
    """Every seed-level comparison of the sweep, one record each (`verdicts.json`, what
    `stepjepa compare` checks a rerun against): config, `against` ("sft", or "base" in a
    one-at-a-time sweep), verdict, mean paired difference of accuracy over seeds (`delta`),
    its 95% t interval, the paired t-test's p and its Holm adjustment, paired seeds; a config
    with no completed run has verdict "failed". Not in summary.json: `dvc metrics show` would
    grow a column per number."""
    out = []
    for row in rows:
        if row["config"] == SFT:
            continue
        where = {"factor": row["factor"], "level": row["level"]} if row.get("factor") not in (None, "base") else {}
        if "vs_sft_verdict" not in row:
            out.append(
                {
                    "config": row["config"],
                    "against": SFT,
                    "verdict": "failed" if not row.get("completed") else "no baseline to pair with",
                }
                | where
            )
        for vs in ("vs_sft", "vs_base"):
            if f"{vs}_verdict" not in row:
                continue
            record = {
                "config": row["config"],
                "against": vs.removeprefix("vs_"),
                "verdict": row[f"{vs}_verdict"],
                "paired_seeds": row[f"{vs}_paired_seeds"],
            }
            for name, key in (
                ("delta", "t_delta"),
                ("ci_low", "t_ci_low"),
                ("ci_high", "t_ci_high"),
                ("p", "t_p"),
                ("p_holm", "t_p_holm"),
            ):
                value = row.get(f"{vs}_{key}")
                if value is not None and not np.isnan(value):
                    record[name] = reported(name, float(value))  # a p-value by significant digits: it can be 1e-9
            out.append(record | where)
    return out


def write_plot_data(rows: list[dict], results: list[RunResult], folder: Path) -> None:
    """Tabular data for `dvc plots`: validation metrics per config, the training curves and the
    seed-level verdicts (`verdict_records`)."""
    folder.mkdir(parents=True, exist_ok=True)
    measured = (METRIC, "nll", "step2_nll", "vs_sft_step2_nll_delta")
    table = [
        {"config": r["config"], "views": r["views"], "k": r["k"], "lambda": r["lambda"]}
        | {key: reported(key, r.get(key)) for key in measured}
        | {"seeds": len(r["seeds"])}
        for r in rows
        if METRIC in r
    ]
    (folder / "accuracy.json").write_text(json.dumps(table, indent=1) + "\n")
    (folder / "verdicts.json").write_text(json.dumps(verdict_records(rows), indent=1) + "\n")
    curves = [
        {"run": r.spec.name, "step": h["step"]}
        | {key: reported(key, h.get(key)) for key in ("lm_loss", "val_step2_nll")}
        for r in results
        if r.completed
        for h in r.history
    ]
    (folder / "loss_curves.json").write_text(json.dumps(curves) + "\n")
