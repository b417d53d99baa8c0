"""Made-up results of a 2 x 2 sweep over two seeds (or `seeds`), in the form the sweep flow
collects them: what the report and plots-page tests summarise, without training anything.
k2_lam0.5 is 0.3 more accurate than the rest; with 2 seeds its verdict is "too few seeds to
tell", with 4 it is "better"."""

from __future__ import annotations

import numpy as np

from stepjepa.config import SweepConfig
from stepjepa.sweep.specs import RunResult, expand_grid

HEALTHY = {
    "mean_cos": 0.3,
    "rank_view1": 40.0,
    "rank_view2": 35.0,
    "spread_view1": 0.3,
    "spread_view2": 0.2,
    "jepa_loss": 0.7,
    "n_pairs": 300,
}
COLLAPSED = {
    "mean_cos": 0.999,
    "rank_view1": 1.01,
    "rank_view2": 1.02,
    "spread_view1": 2e-5,
    "spread_view2": 0.01,
    "jepa_loss": 0.001,
    "n_pairs": 300,
}


def fake_results(
    fail: str | None = None, collapse: str | None = None, same_accuracy: bool = False, seeds: tuple[int, ...] = (0, 1)
):
    rng = np.random.default_rng(0)
    out = []
    for spec in expand_grid(SweepConfig(ks=[1, 2], lambdas=[0.5, 2.0], seeds=list(seeds))):
        if spec.config_name == fail:
            out.append(RunResult(spec, "failed"))
            continue
        good = spec.config_name == "k2_lam0.5"
        p = 0.2 if same_accuracy else 0.2 + 0.3 * good
        correct = rng.random(300) < p
        step2 = rng.normal(2.0 - 0.2 * good, 0.3, 300)
        diag = COLLAPSED if spec.config_name == collapse else HEALTHY
        out.append(
            RunResult(
                spec,
                "completed",
                correct_strict=correct.tolist(),
                metrics={
                    "accuracy_strict": correct.mean() if not same_accuracy else 0.2,
                    "accuracy_flexible": correct.mean() + 0.01,
                    "nll": float(step2.mean()) + 0.5,
                    "step2_nll": float(step2.mean()),
                }
                | diag,
                heldout=[{"nll": v + 0.5, "step2_nll": v} for v in step2],
                history=[
                    {"step": s, "lm_loss": 3.5 - 0.5 * s, "jepa_loss": 0.5, "val_step2_nll": 2.5 - 0.1 * s}
                    for s in (1, 2, 3)
                ],
            )
        )
    return out


# One factor at a time around k1_lam0.1 (infonce): true validation accuracy of each config.
STUDY = SweepConfig(
    ks=[1, 2], lambdas=[0.1, 0.5], layout="packed", axes={"loss": ["infonce", "mse"]}, design="one_at_a_time"
)
STUDY_ACCURACY = {"sft": 0.3, "k1_lam0.1": 0.5, "k2_lam0.1": 0.5, "k1_lam0.5": 0.3, "k1_lam0.1_loss-mse": 0.1}


def fake_study(seeds: tuple[int, ...] = (0, 1, 2, 3, 4), fail: str | None = None):
    """Made-up results of `STUDY` (what `summarize` reads): each seed shifts every config by
    the same amount (what pairing by seed removes), plus a little noise per run."""
    rng = np.random.default_rng(1)
    shift = dict(zip(seeds, rng.normal(0, 0.05, len(seeds))))
    out = []
    for spec in expand_grid(STUDY.model_copy(update={"seeds": list(seeds)})):
        if spec.config_name == fail:
            out.append(RunResult(spec, "failed"))
            continue
        p = STUDY_ACCURACY[spec.config_name] + shift[spec.seed] + rng.normal(0, 0.01)
        correct = rng.random(200) < p
        out.append(
            RunResult(
                spec,
                "completed",
                correct_strict=correct.tolist(),
                metrics={"accuracy_strict": float(p), "nll": 1.0, "step2_nll": 1.5} | HEALTHY,
            )
        )
    return out
