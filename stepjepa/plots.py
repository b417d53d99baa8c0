"""The sweep's figures: a K x lambda heatmap (validation accuracy and validation Step-2 NLL,
which moves even when accuracy is flat) and the training curves of every run overlaid."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: list[dict], key: str, views: str) -> tuple[list[int], list[float], np.ndarray]:
    grid_rows = [r for r in rows if r["config"] != "sft"]
    ks = sorted({r["k"] for r in grid_rows})
    lams = sorted({r["lambda"] for r in grid_rows})
    values = np.full((len(ks), len(lams)), np.nan)
    for r in grid_rows:
        if r.get(key) is not None and r.get("views", "steps") == views:
            values[ks.index(r["k"]), lams.index(r["lambda"])] = r[key]
    return ks, lams, values


PANELS = (("accuracy_strict", "validation strict accuracy", "viridis"),
          ("step2_nll", "validation Step-2 NLL (lower is better)", "viridis_r"))


def plot_heatmap(rows: list[dict], path: Path) -> Path:
    """K x lambda seed means, one panel per metric (columns) and view pair (rows); SFT's
    value in each title; failed = blank."""
    plt = _pyplot()
    base = next((r for r in rows if r["config"] == "sft"), {})
    pairs = sorted({r.get("views", "steps") for r in rows if r["config"] != "sft"}) or ["steps"]
    ks, lams, _ = _grid(rows, PANELS[0][0], pairs[0])
    fig, axes = plt.subplots(len(pairs), len(PANELS), squeeze=False,
                             figsize=(2.5 + 2.4 * len(lams), len(pairs) * (2.0 + 0.9 * max(len(ks), 1))))
    cells = [(ax, pair, panel) for row, pair in zip(axes, pairs, strict=True) for ax, panel in zip(row, PANELS)]
    for ax, pair, (key, title, cmap) in cells:
        _, _, values = _grid(rows, key, pair)
        title = title if len(pairs) == 1 else f"{pair}: {title}"
        im = ax.imshow(values, cmap=cmap, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.3f}", ha="center", va="center", color="w")
        ax.set_xticks(range(len(lams)), [f"{x:g}" for x in lams])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("lambda")
        ax.set_ylabel("K (predictor tokens)")
        sft = f"\nSFT = {base[key]:.3f}" if base.get(key) is not None else ""
        ax.set_title(f"{title}{sft}", fontsize=9)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(results: list[dict], path: Path) -> Path:
    """Training LM loss and held-out Step-2 NLL of every completed run, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "lm_loss", "training LM loss"),
                           (axes[1], "val_step2_nll", "validation Step-2 NLL (in training)")):
        for r in results:
            points = [(h["step"], h[key]) for h in r.get("history", []) if h.get(key) is not None]
            if r["status"] == "completed" and points:
                ax.plot(*zip(*points), label=r["spec"]["name"], lw=1, marker="o" if key != "lm_loss" else None, ms=3)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
