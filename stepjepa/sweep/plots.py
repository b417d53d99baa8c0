"""The sweep's figures: a K x lambda heatmap (validation accuracy and validation Step-2 NLL,
which moves even when accuracy is flat), the training curves of every run overlaid, the
seed-level effects (per factor in a one-at-a-time sweep); and the HTML page template that
lets `dvc plots show` render its vega charts offline."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from stepjepa.sweep.specs import RunResult, config_name
from stepjepa.vocabulary import SFT


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(rows: list[dict], key: str, views: str) -> tuple[list[int], list[float], np.ndarray]:
    # Configs at every axis's base value only (`k1_lam0.1`, not `k1_lam0.1_loss-mse`): one per cell.
    grid_rows = [
        r
        for r in rows
        if r["config"] != SFT and r["config"] == config_name(r["k"], r["lambda"], r.get("views", "steps"))
    ]
    ks = sorted({r["k"] for r in grid_rows})
    lams = sorted({r["lambda"] for r in grid_rows})
    values = np.full((len(ks), len(lams)), np.nan)
    for r in grid_rows:
        if r.get(key) is not None and r.get("views", "steps") == views:
            values[ks.index(r["k"]), lams.index(r["lambda"])] = r[key]
    return ks, lams, values


PANELS = (
    ("accuracy_strict", "validation strict accuracy", "viridis"),
    ("step2_nll", "validation Step-2 NLL (lower is better)", "viridis_r"),
)


def plot_heatmap(rows: list[dict], path: Path) -> Path:
    """K x lambda seed means, one panel per metric (columns) and view pair (rows); SFT's
    value in each title; failed = blank."""
    fig = heatmap_figure(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def heatmap_figure(rows: list[dict]):
    """`plot_heatmap`'s figure, unsaved (the caller closes it)."""
    plt = _pyplot()
    base = next((r for r in rows if r["config"] == SFT), {})
    pairs = sorted({r.get("views", "steps") for r in rows if r["config"] != SFT}) or ["steps"]
    ks, lams, _ = _grid(rows, PANELS[0][0], pairs[0])
    # Each panel wide enough for its colorbar and a title wrapped to the axes; constrained
    # layout then makes room above for the wrapped lines (tight_layout clipped long titles).
    width = max(3.4, 1.25 + 1.2 * len(lams))
    fig, axes = plt.subplots(
        len(pairs),
        len(PANELS),
        squeeze=False,
        layout="constrained",
        figsize=(len(PANELS) * width, len(pairs) * (2.4 + 0.9 * max(len(ks), 1))),
    )
    cells = [(ax, pair, panel) for row, pair in zip(axes, pairs, strict=True) for ax, panel in zip(row, PANELS)]
    for ax, pair, (key, title, cmap) in cells:
        _, _, values = _grid(rows, key, pair)
        title = title if len(pairs) == 1 else f"{pair}: {title}"
        sft = f"\nSFT = {base[key]:.3f}" if base.get(key) is not None else ""
        ax.set_title(textwrap.fill(title, int((width - 1.0) / 0.07)) + sft, fontsize=9)
        if not values.size:  # a baseline-only sweep: an empty image would be a blank square
            ax.set_axis_off()
            ax.text(0.5, 0.5, "no K x lambda config\nin this sweep", ha="center", va="center", transform=ax.transAxes)
            continue
        im = ax.imshow(values, cmap=cmap, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            # A blank (failed) cell shows the white page; a colour cell its colour.
            cell = (1.0, 1.0, 1.0) if np.isnan(v) else im.cmap(im.norm(v))[:3]
            text = "n/a" if np.isnan(v) else f"{v:.3f}"
            ax.text(j, i, text, ha="center", va="center", color=_text_color(cell))
        ax.set_xticks(range(len(lams)), [f"{x:g}" for x in lams])
        ax.set_yticks(range(len(ks)), [str(k) for k in ks])
        ax.set_xlabel("lambda")
        ax.set_ylabel("K (predictor tokens)")
        fig.colorbar(im, ax=ax)
    return fig


def _text_color(cell: tuple[float, float, float]) -> str:
    """Black or white, whichever contrasts more with the cell (WCAG's relative luminance and
    contrast ratio; at least 4.58:1 either way): white on viridis' yellow end could not be read."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in cell]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if (luminance + 0.05) / 0.05 >= 1.05 / (luminance + 0.05) else "white"


def _effect(ax, x: int, row: dict, vs: str) -> None:
    """One point: the mean paired difference over seeds and its 95% t interval (if any)."""
    if f"{vs}_t_delta" not in row:
        return
    delta = row[f"{vs}_t_delta"]
    low, high = row.get(f"{vs}_t_ci_low", delta), row.get(f"{vs}_t_ci_high", delta)
    ax.errorbar(x, delta, yerr=[[delta - low], [high - delta]], fmt="o", capsize=4, color="C0")


def _effect_axes(ax, labels: list[str], xlabel: str, title: str) -> None:
    ax.axhline(0.0, color="gray", lw=0.8, ls="--")
    ax.set_xlim(-0.5, max(len(labels), 1) - 0.5)
    ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=20 if len(labels) > 4 else 0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("delta validation accuracy")
    ax.set_title(title, fontsize=9)


def plot_effects(rows: list[dict], path: Path) -> Path:
    """The seed-level effects (unit: training run). One factor at a time (`report.factor_table`):
    a row per factor, each level against the base config (left) and against SFT (right). A
    grid: every config against SFT. Configs with under 2 paired seeds have no interval."""
    from stepjepa.sweep.report import factor_table

    plt, table = _pyplot(), factor_table(rows)
    if not table:
        configs = [r for r in rows if r["config"] != SFT]
        fig, ax = plt.subplots(figsize=(max(5.0, 1.5 + 0.9 * len(configs)), 3.8), layout="constrained")
        for x, row in enumerate(configs):
            _effect(ax, x, row, "vs_sft")
        _effect_axes(ax, [r["config"] for r in configs], "config", "each config against SFT")
    else:
        width = max(6.0, 2.0 + 1.6 * max(len(levels) for levels in table.values()))
        fig, axes = plt.subplots(len(table), 2, figsize=(width, 3.4 * len(table)), squeeze=False, layout="constrained")
        for (left, right), (factor, levels) in zip(axes, table.items(), strict=True):
            labels = [f"{lv['level']}{' (base)' if lv['is_base'] else ''}" for lv in levels]
            for x, level in enumerate(levels):
                if level["is_base"]:
                    left.plot(x, 0.0, "s", color="gray")
                else:
                    _effect(left, x, level["row"], "vs_base")
                _effect(right, x, level["row"], "vs_sft")
            _effect_axes(left, labels, factor, f"{factor}: against the base config")
            _effect_axes(right, labels, factor, f"{factor}: against SFT")
    fig.suptitle(
        "validation accuracy: mean paired difference over seeds, 95% t interval (unit: training run)", fontsize=9
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_loss_curves(results: list[RunResult], path: Path) -> Path:
    """Training LM loss and held-out Step-2 NLL of every completed run, one line per run."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in (
        (axes[0], "lm_loss", "training LM loss"),
        (axes[1], "val_step2_nll", "validation Step-2 NLL (in training)"),
    ):
        for r in results:
            points = [(h["step"], h[key]) for h in r.history if h.get(key) is not None]
            if r.completed and points:
                ax.plot(*zip(*points), label=r.spec.name, lw=1, marker="o" if key != "lm_loss" else None, ms=3)
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# The standalone builds of vega, vega-lite and vega-embed, in load order (each needs the one before).
VEGA_LIBS = ("vega/build/vega.min.js", "vega-lite/build/vega-lite.min.js", "vega-embed/build/vega-embed.min.js")

PAGE_HEAD = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>Step-JEPA sweep: dvc plots</title>
<style>body { font-family: sans-serif; } body > div { margin: 1.5em 0; } img { max-width: 100%; }</style>
"""
# DVC's plot divs call `vegaEmbed(el, spec)`: render to SVG (crisp, and its marks are in the
# page, where a browser test can count them) and keep each view for inspection.
PAGE_TAIL = """<script>
window.vegaViews = [];
const dvcEmbed = vegaEmbed;
window.vegaEmbed = (el, spec, opts) => dvcEmbed(el, spec, {renderer: "svg", ...opts})
  .then((result) => { window.vegaViews.push(result.view); return result; });
</script>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def offline_page_template(node_modules: Path) -> str:
    """A `dvc plots show --html-template` page with vega, vega-lite and vega-embed inlined
    from `node_modules` (npm), so the page renders with no network, from any folder.

    DVC's own template loads them from a CDN through its `{scripts}` placeholder, which this
    one leaves out."""
    missing = [lib for lib in VEGA_LIBS if not (node_modules / lib).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{node_modules}: missing {', '.join(missing)}; run `make vega` "
            "(npm install vega@5 vega-lite@5 vega-embed@6)"
        )
    scripts = "".join(f"<script>\n{(node_modules / lib).read_text(encoding='utf-8')}\n</script>\n" for lib in VEGA_LIBS)
    return PAGE_HEAD + scripts + PAGE_TAIL
