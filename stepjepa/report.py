"""The sweep summary: per-config accuracy over seeds, paired comparison with the SFT
baseline, the best config, a markdown table, and plots (K x lambda heatmap, loss curves).

Input is a list of run results, each a dict with `spec` (`RunSpec.as_dict()`), `status`
("completed" or "failed"), and for completed runs `metrics` (the evaluation metrics),
`correct_strict` (per-question booleans in test order) and optionally `history`
(`{"step": [...], "loss": [...], ...}`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from stepjepa.stats import holm_adjust, paired_bootstrap

METRIC = "accuracy_strict"


def _by_config(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        groups[r["spec"]["config_name"]].append(r)
    return groups


def _correct_matrix(runs: list[dict], seeds: list[int]) -> np.ndarray:
    by_seed = {r["spec"]["seed"]: r["correct_strict"] for r in runs}
    return np.array([by_seed[s] for s in seeds], dtype=bool)


def summarize(results: list[dict]) -> list[dict[str, Any]]:
    """One row per config, baseline first; `delta` and its CI are against the baseline
    on the seeds both completed."""
    groups = _by_config(results)
    base = {r["spec"]["seed"]: r for r in groups.get("sft", []) if r["status"] == "completed"}
    rows = []
    for name, runs in sorted(groups.items(), key=lambda kv: (kv[0] != "sft", kv[0])):
        done = [r for r in runs if r["status"] == "completed"]
        spec = runs[0]["spec"]
        row = {"config": name, "k": spec["k"], "lambda": spec["lam"], "runs": len(runs), "completed": len(done)}
        if done:
            row[METRIC] = float(np.mean([r["metrics"][METRIC] for r in done]))
            row["accuracy_flexible"] = float(np.mean([r["metrics"]["accuracy_flexible"] for r in done]))
            seeds = sorted(s for s in (r["spec"]["seed"] for r in done) if s in base)
            if seeds and name != "sft":
                cmp = paired_bootstrap(_correct_matrix(done, seeds), _correct_matrix(list(base.values()), seeds))
                row |= {f"vs_sft_{k}": v for k, v in cmp.as_dict().items()}
        rows.append(row)
    compared = [r for r in rows if "vs_sft_p_value" in r]
    for row, adjusted in zip(compared, holm_adjust([r["vs_sft_p_value"] for r in compared]), strict=True):
        row["vs_sft_p_holm"] = adjusted
    return rows


def best_config(rows: list[dict]) -> dict | None:
    """Highest mean strict accuracy; ties go to the flexible metric, then the smaller K."""
    done = [r for r in rows if METRIC in r]
    if not done:
        return None
    return max(done, key=lambda r: (r[METRIC], r["accuracy_flexible"], -r["k"], -r["lambda"]))


def markdown_table(rows: list[dict]) -> str:
    head = ("| config | K | lambda | seeds done | strict acc | flexible acc | delta vs SFT [95% CI] | McNemar p "
            "| p, Holm-adjusted | verdict |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        acc = f"{r[METRIC]:.3f}" if METRIC in r else "failed"
        flex = f"{r['accuracy_flexible']:.3f}" if METRIC in r else ""
        if "vs_sft_delta" in r:
            delta = f"{r['vs_sft_delta']:+.3f} [{r['vs_sft_ci_low']:+.3f}, {r['vs_sft_ci_high']:+.3f}]"
            p, holm, verdict = f"{r['vs_sft_p_value']:.3g}", f"{r['vs_sft_p_holm']:.3g}", r["vs_sft_verdict"]
        else:
            delta, p, holm, verdict = "", "", "", "baseline" if r["config"] == "sft" else ""
        lines.append(f"| {r['config']} | {r['k']} | {r['lambda']:g} | {r['completed']}/{r['runs']} | {acc} | {flex} "
                     f"| {delta} | {p} | {holm} | {verdict} |")
    return "\n".join(lines)


def plot_heatmap(rows: list[dict], path: Path) -> Path:
    """K x lambda mean strict accuracy (seed mean); failed configs are blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid_rows = [r for r in rows if r["config"] != "sft"]
    ks = sorted({r["k"] for r in grid_rows})
    lams = sorted({r["lambda"] for r in grid_rows})
    acc = np.full((len(ks), len(lams)), np.nan)
    for r in grid_rows:
        acc[ks.index(r["k"]), lams.index(r["lambda"])] = r.get(METRIC, np.nan)
    base = next((r.get(METRIC) for r in rows if r["config"] == "sft"), None)
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(lams), 1.4 + 0.9 * len(ks)))
    im = ax.imshow(acc, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, "failed" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", color="w")
    ax.set_xticks(range(len(lams)), [f"{x:g}" for x in lams])
    ax.set_yticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlabel("lambda")
    ax.set_ylabel("K (predictor tokens)")
    ax.set_title(f"GSM8K strict accuracy (seed mean); SFT = {base:.3f}" if base is not None else "GSM8K strict accuracy")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(results: list[dict], path: Path, metric: str = "lm_loss") -> Path:
    """Training curves of every completed run that has a history."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        hist = r.get("history") or {}
        if r["status"] == "completed" and hist.get(metric):
            ax.plot(hist["step"], hist[metric], label=r["spec"]["name"], lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per run")
    if ax.lines:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def read_run_result(run_dir: Path) -> dict[str, Any]:
    """What the summary needs of one finished run: eval metrics, per-question strict
    correctness (in test order) and the training history."""
    import json

    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    with (run_dir / "eval" / "predictions.jsonl").open(encoding="utf-8") as fh:
        correct = [bool(json.loads(line)["correct_strict"]) for line in fh]
    history: dict[str, list] = defaultdict(list)
    if (run_dir / "metrics.jsonl").is_file():
        with (run_dir / "metrics.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                for key, value in json.loads(line).items():
                    history[key].append(value)
    return {"metrics": metrics, "correct_strict": correct, "history": dict(history)}


def champion_run(results: list[dict], best: dict) -> dict:
    """The best config's run to register: its most accurate seed (ties: the lowest seed)."""
    runs = [r for r in results if r["spec"]["config_name"] == best["config"] and r["status"] == "completed"]
    return max(runs, key=lambda r: (r["metrics"][METRIC], -r["spec"]["seed"]))


def summary_metrics(rows: list[dict], best: dict | None) -> dict[str, Any]:
    """The sweep's metrics file: accuracy per config (baseline included) and the best."""
    keep = (METRIC, "accuracy_flexible", "vs_sft_delta", "vs_sft_ci_low", "vs_sft_ci_high", "vs_sft_p_value",
            "vs_sft_p_holm")
    configs = {r["config"]: {k: r[k] for k in keep if k in r} | {"completed": r["completed"], "runs": r["runs"]}
               for r in rows}
    out: dict[str, Any] = {"configs": configs, "failed_runs": sum(r["runs"] - r["completed"] for r in rows)}
    if best is not None:
        out |= {"best_config": best["config"], f"best_{METRIC}": best[METRIC],
                "best_vs_sft_verdict": best.get("vs_sft_verdict", "baseline")}
    return out


def write_plot_data(rows: list[dict], results: list[dict], folder: Path) -> None:
    """Tabular data for `dvc plots`: accuracy per config and the loss curves."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    accuracy = [{"config": r["config"], "k": r["k"], "lambda": r["lambda"], METRIC: r[METRIC]}
                for r in rows if METRIC in r]
    (folder / "accuracy.json").write_text(json.dumps(accuracy, indent=1) + "\n")
    curves = [{"run": r["spec"]["name"], "step": s, "lm_loss": v}
              for r in results if r["status"] == "completed"
              for s, v in zip(r.get("history", {}).get("step", []), r.get("history", {}).get("lm_loss", []))]
    (folder / "loss_curves.json").write_text(json.dumps(curves) + "\n")
