"""Does a config beat the SFT baseline? Paired statistics over the same test questions.

Every config is evaluated on the same questions as its seed's baseline, so the comparison
is paired per question: a bootstrap confidence interval of the accuracy difference and
McNemar's exact test on the discordant pairs. A report can then say "beats SFT" only when
the interval lies above zero, not merely when the mean is higher. The p-values of a
sweep's configs are also reported Holm-adjusted (`holm_adjust`): they share a baseline
and are many.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    delta: float
    """Mean accuracy difference (config - baseline), averaged over seeds."""
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided McNemar exact test on discordant (question, seed) pairs."""
    n_questions: int
    n_seeds: int

    @property
    def verdict(self) -> str:
        if self.ci_low > 0:
            return "better"
        if self.ci_high < 0:
            return "worse"
        return "no significant difference"

    def as_dict(self) -> dict:
        return asdict(self) | {"verdict": self.verdict}


def mcnemar_exact(config_correct: np.ndarray, baseline_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    a = np.asarray(config_correct, dtype=bool).ravel()
    b = np.asarray(baseline_correct, dtype=bool).ravel()
    wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap(
    config_correct: np.ndarray,
    baseline_correct: np.ndarray,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare `(n_seeds, n_questions)` boolean matrices, seeds paired row by row.

    Questions are resampled (the same resample for every seed), which is the unit the
    test set samples; seeds are averaged.
    """
    a = np.atleast_2d(np.asarray(config_correct, dtype=float))
    b = np.atleast_2d(np.asarray(baseline_correct, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired results need equal, non-empty shapes; got {a.shape} and {b.shape}")
    per_question = (a - b).mean(axis=0)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_question.size, size=(n_boot, per_question.size))
    boots = per_question[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    return PairedComparison(
        delta=float(per_question.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=mcnemar_exact(a, b),
        n_questions=a.shape[1],
        n_seeds=a.shape[0],
    )


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    A sweep compares every config with the same baseline: with 9 configs, one raw
    p < 0.05 turns up by chance in about a third of sweeps where nothing works. Holm's
    adjustment bounds that family-wise error at the nominal level (and is uniformly more
    powerful than plain Bonferroni): the i-th smallest p is multiplied by (m - i), then
    the results are made non-decreasing.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted
