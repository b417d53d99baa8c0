"""The sweep's matplotlib figures: every title fits in the figure and clears its neighbours."""

from __future__ import annotations

import itertools
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from stepjepa.sweep.plots import heatmap_figure
from stepjepa.sweep.specs import config_name


def _rows(lambdas: list[float], pairs: list[str]) -> list[dict]:
    rows = [{"config": "sft", "k": 0, "lambda": 0.0, "views": "steps", "accuracy_strict": 0.015, "step2_nll": 2.1}]
    for views, k, lam in itertools.product(pairs, (1, 2, 3), lambdas):
        rows.append(
            {
                "config": config_name(k, lam, views),
                "k": k,
                "lambda": lam,
                "views": views,
                "accuracy_strict": 0.01 * k,
                "step2_nll": 2.0 - lam / 10,
            }
        )
    return rows


@pytest.mark.parametrize(
    "lambdas, pairs",
    [([0.5], ["steps"]), ([0.5], ["steps", "user_assistant"]), ([0.1, 0.5, 2.0], ["steps", "user_assistant"])],
)
def test_heatmap_titles_fit_and_do_not_overlap(lambdas, pairs) -> None:
    fig = heatmap_figure(_rows(lambdas, pairs))
    try:
        renderer = fig.canvas.get_renderer()
        fig.canvas.draw()
        page = fig.bbox
        titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
        assert len(titles) == 2 * len(pairs)
        cells = [[t.get_text() for t in ax.texts] for ax in fig.axes if ax.get_title()]
        assert all(len(texts) == 3 * len(lambdas) for texts in cells), "a panel lacks its K x lambda cells"
        for box in titles:
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, "title clipped by the figure edge"
        for a, b in itertools.combinations(titles, 2):
            assert not a.overlaps(b), "titles run into each other"
    finally:
        plt.close(fig)


def test_a_sweep_of_the_baseline_alone_says_it_has_no_grid_and_draws_no_empty_image() -> None:
    rows = _rows([], ["steps"])  # SFT only: no K x lambda cell
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns of singular limits for an empty image
        fig = heatmap_figure(rows)
        fig.canvas.draw()
    try:
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert len(panels) == 2 and not any(ax.images for ax in fig.axes)
        for ax in panels:
            assert "SFT = " in ax.get_title()
            assert [t.get_text() for t in ax.texts] == ["no K x lambda config\nin this sweep"]
    finally:
        plt.close(fig)


def _contrast(a, b) -> float:
    """WCAG 2 contrast ratio of two sRGB colours."""

    def luminance(rgb):
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3])
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    low, high = sorted([luminance(a), luminance(b)])
    return (high + 0.05) / (low + 0.05)


def test_every_cell_value_can_be_read_on_its_cell() -> None:
    """WCAG AA (4.5:1) for each number on its colour, a failed run's "n/a" on the white page
    included: the light end of viridis took white text before."""
    rows = _rows([0.1, 0.5, 2.0], ["steps"])
    rows[1]["accuracy_strict"] = None  # a failed config: a blank cell
    fig = heatmap_figure(rows)
    try:
        seen = 0
        for ax in fig.axes:
            if not ax.images:
                continue
            im = ax.images[0]
            values = im.get_array()
            for text in ax.texts:
                j, i = (round(x) for x in text.get_position())
                cell = (
                    (1.0, 1.0, 1.0)
                    if np.ma.is_masked(values[i, j]) or np.isnan(values[i, j])
                    else im.to_rgba(values[i, j])
                )
                ratio = _contrast(to_rgb(text.get_color()), cell)
                assert ratio >= 4.5, f"{text.get_text()!r} on {cell}: contrast {ratio:.2f}"
                seen += 1
        assert seen == 2 * 9 and any(t.get_text() == "n/a" for ax in fig.axes for t in ax.texts)
    finally:
        plt.close(fig)
