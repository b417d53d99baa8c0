"""The sweep's matplotlib figures: every title fits in the figure and clears its neighbours."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pytest

from stepjepa.sweep.plots import heatmap_figure


def _rows(lambdas: list[float], pairs: list[str]) -> list[dict]:
    rows = [{"config": "sft", "k": 0, "lambda": 0.0, "views": "steps", "accuracy_strict": 0.015, "step2_nll": 2.1}]
    for views, k, lam in itertools.product(pairs, (1, 2, 3), lambdas):
        rows.append(
            {
                "config": f"{views}_k{k}_lam{lam}",
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
        for box in titles:
            assert page.x0 <= box.x0 and box.x1 <= page.x1 and box.y1 <= page.y1, "title clipped by the figure edge"
        for a, b in itertools.combinations(titles, 2):
            assert not a.overlaps(b), "titles run into each other"
    finally:
        plt.close(fig)
