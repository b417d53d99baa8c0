"""Does a config beat the SFT baseline? Verdicts whose unit is the training run, and the
per-question statistics that describe the trained models.

**The verdict** ("better", "worse", "no significant difference", "too few seeds to tell")
comes from `seed_verdicts`: a two-sided paired t-test of per-seed accuracy (config seed s
against SFT seed s, the LLM-JEPA paper's test), Holm-adjusted over every config of the
sweep, at `ALPHA` = 0.05. Why the training run is the unit: what varies most between two
sweeps is the training itself (two seeds of one demo config: 0.506 +- 0.059), and a claim
that a config helps is a claim about training it again, not about these particular weights.
Why pairing: seed s of a config and of SFT share the data order and initial weights, so the
difference removes what the seed does to both. Why two-sided: a verdict may go either way,
and two one-tailed tests at 0.05 would be one test at 0.10. Why Holm: the configs share one
baseline and are many; Holm bounds the chance of any false verdict in the sweep at ALPHA.
Why not a two-level bootstrap (seeds, then questions within them): with 2-5 seeds resampling
seeds has only a handful of distinct outcomes and its interval is too narrow, while the t
distribution accounts for so few units. Below `MIN_SEEDS` = 3 paired seeds the verdict is
"too few seeds to tell": with 2 seeds the t-test has 1 degree of freedom (it rejects only
at an enormous effect or a near-zero spread) and its normality cannot be checked at all; 3
is the least that gives a usable test, and the paper used 5.

**Per question, models fixed** (`paired_bootstrap`, `mcnemar_exact`): every config is
evaluated on the same questions as its seed's baseline, so the comparison is paired per
question: a bootstrap interval of the accuracy difference (questions resampled, seeds
averaged) and McNemar's exact test on the discordant (question, seed) pairs. Both treat the
trained models as fixed: they say how sure one can be about *these* models on more
questions like these, nothing about retraining, so they decide no verdict. Their p-values are
also reported Holm-adjusted (`holm_adjust`).

Across seeds, `mean_std` and `paired_t_test`. Continuous per-example values (held-out NLL
per question) get `paired_mean_bootstrap`. Nothing here needs scipy: the t distribution's
tail has a closed form for integer degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from stepjepa.vocabulary import SFT

ALPHA = 0.05
"""Family-wise error rate of a sweep's verdicts (Holm over its configs)."""
MIN_SEEDS = 3
"""Fewest paired seeds for a verdict: 2 give the t-test 1 degree of freedom."""
TOO_FEW_SEEDS = "too few seeds to tell"

# What a sweep's table, summary.json and registry tags say about how it chose and judged.
SELECTION_RULE = (
    "highest mean validation accuracy_strict over seeds (ties: lower mean validation NLL, then smaller K "
    "and lambda); the verdict does not change it"
)
VERDICT_RULE = (
    f"two-sided paired t-test of accuracy over seeds (unit: training run), Holm over the sweep's configs, "
    f"alpha {ALPHA:g}, at least {MIN_SEEDS} seeds"
)


def beats_sft(best: dict) -> bool:
    """Whether the selected config (a summary row) beats SFT by the seed-level verdict on validation."""
    return best["config"] != SFT and best.get("vs_sft_verdict") == "better"


@dataclass(frozen=True)
class PairedComparison:
    """Per question, conditional on these trained models: no verdict (see `seed_verdicts`)."""

    delta: float
    """Mean accuracy difference (config - baseline), averaged over seeds."""
    ci_low: float
    ci_high: float
    p_value: float
    """Two-sided McNemar exact test on discordant (question, seed) pairs."""
    n_questions: int
    n_seeds: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SeedComparison:
    """One config against the baseline with the training run as the unit."""

    delta: float
    """Mean over paired seeds of (config - baseline) score."""
    t: float
    """Paired t statistic; nan with fewer than 2 seeds or differences of zero spread."""
    p_value: float
    """Two-sided paired t-test over seeds (1.0 where `t` is nan)."""
    p_holm: float
    """`p_value` Holm-adjusted over every config of the sweep."""
    n_seeds: int
    verdict: str

    def as_dict(self) -> dict:
        return asdict(self)


def seed_verdicts(pairs: list[tuple], alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> list[SeedComparison]:
    """Verdicts for all configs of a sweep, in the input order.

    `pairs[i]` is `(config_scores, baseline_scores)` of config i: `(n_seeds,)` per-seed
    scores (validation accuracy), paired by seed; empty for a config with no completed seed
    (it stays in the Holm family with p = 1: the family is the sweep, fixed before its
    results). A config is "better" ("worse") when its Holm-adjusted two-sided p is at most
    `alpha` and its mean difference is positive (negative), if it has `min_seeds` paired seeds.
    """
    tests = [paired_t_test(a, b, "two-sided") if len(a) else (math.nan, 1.0) for a, b in pairs]
    adjusted = holm_adjust([p for _, p in tests])
    out = []
    for (a, b), (t, p), p_holm in zip(pairs, tests, adjusted, strict=True):
        d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
        delta = float(d.mean()) if d.size else math.nan
        if d.size < min_seeds:
            verdict = TOO_FEW_SEEDS
        elif p_holm <= alpha and not math.isnan(t):
            verdict = "better" if delta > 0 else "worse"
        else:
            verdict = "no significant difference"
        out.append(SeedComparison(delta, t, p, p_holm, int(d.size), verdict))
    return out


def mcnemar_exact(config_correct: np.ndarray, baseline_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    a = np.asarray(config_correct, dtype=bool).ravel()
    b = np.asarray(baseline_correct, dtype=bool).ravel()
    wins, losses = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n = wins + losses
    if n == 0:
        return 1.0
    term = tail = 1  # C(n, 0); then C(n, i + 1) = C(n, i) (n - i) / (i + 1), exactly, in integers
    for i in range(min(wins, losses)):
        term = term * (n - i) // (i + 1)
        tail += term
    return min(1.0, 2 * tail / 2**n)


def _bootstrap_ci(per_example: np.ndarray, n_boot: int, confidence: float, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of `(n,)` per-example values, resampling examples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, per_example.size, size=(n_boot, per_example.size))
    boots = per_example[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(boots, [tail, 1 - tail])
    return float(low), float(high)


def paired_bootstrap(
    config_correct: np.ndarray,
    baseline_correct: np.ndarray,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare `(n_seeds, n_questions)` boolean matrices, seeds paired row by row.

    Questions are resampled (the same resample for every seed), which is the unit the
    test set samples; seeds are averaged. The trained models are held fixed: the interval
    and McNemar's p leave out the variance between training runs, so they decide no verdict.
    """
    a = np.atleast_2d(np.asarray(config_correct, dtype=float))
    b = np.atleast_2d(np.asarray(baseline_correct, dtype=float))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired results need equal, non-empty shapes; got {a.shape} and {b.shape}")
    per_question = (a - b).mean(axis=0)
    low, high = _bootstrap_ci(per_question, n_boot, confidence, seed)
    return PairedComparison(
        delta=float(per_question.mean()),
        ci_low=low,
        ci_high=high,
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


def benjamini_hochberg(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    Controls the false discovery rate instead of Holm's family-wise error: less strict,
    for a grid where a few true effects among many configs are expected. The i-th
    smallest p becomes min over j >= i of m * p_(j) / j, capped at 1.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i], reverse=True)
    adjusted, running = [0.0] * m, 1.0
    for position, index in enumerate(order):
        running = min(running, m * p_values[index] / (m - position))
        adjusted[index] = running
    return adjusted


def _finite_1d(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite numbers; got {array.tolist()}")
    return array


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of per-seed scores; std 0.0 for one value."""
    array = _finite_1d(values, "mean_std values")
    if array.size == 0:
        raise ValueError("mean_std needs at least one value")
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else 0.0)


def _t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t with integer `df` >= 1, in closed form (Abramowitz and
    Stegun 26.7.3-4: A(t|df) = P(|T| < t) as a finite series in cos(theta))."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2, term, series = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for j in range(1, (df - 1) // 2):
            term *= c2 * (2 * j) / (2 * j + 1)
            series += term
        inside = 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series) if df > 1 else 2 * theta / math.pi
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        for j in range(1, df // 2):
            term *= c2 * (2 * j - 1) / (2 * j)
            series += term
        inside = math.sin(theta) * series
    return (1 - inside) / 2 if t >= 0 else (1 + inside) / 2


def paired_t_test(config_values, baseline_values, alternative: str = "greater") -> tuple[float, float]:
    """(t statistic, p-value) of the paired t-test over seeds, as in the LLM-JEPA paper.

    `config_values[i]` and `baseline_values[i]` are the scores of seed i. The default is
    one-tailed, H1: config - baseline > 0 ("less" and "two-sided" also work). With fewer
    than 2 pairs, or differences of zero variance (to rounding), the test has no
    information: the statistic is nan and p = 1.0, so it never counts as a win.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be greater, less or two-sided; got {alternative!r}")
    a, b = _finite_1d(config_values, "config_values"), _finite_1d(baseline_values, "baseline_values")
    if a.shape != b.shape:
        raise ValueError(f"paired values need equal lengths; got {a.size} and {b.size}")
    d = a - b
    if d.size < 2:
        return math.nan, 1.0
    sd = float(d.std(ddof=1))
    # Identical differences, up to rounding: a - b is off by an ulp of the scores, not of the
    # difference (2/185 - 0 and 93/185 - 91/185 differ by 1e-16, which would give p ~ 1e-15).
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()))
    if sd <= 16 * np.finfo(float).eps * scale:
        return math.nan, 1.0
    t = float(d.mean()) / (sd / math.sqrt(d.size))
    df = d.size - 1
    if alternative == "greater":
        return t, _t_sf(t, df)
    if alternative == "less":
        return t, _t_sf(-t, df)
    return t, min(1.0, 2 * _t_sf(abs(t), df))


def t_quantile(p: float, df: int) -> float:
    """The `p` quantile (0.5 < p < 1) of Student's t with integer `df`, by bisection on `_t_sf`."""
    low, high = 0.0, 1e7
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_sf(mid, df) > 1 - p else (low, mid)
    return (low + high) / 2


def paired_t_interval(config_values, baseline_values, confidence: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean paired difference over seeds: mean +- t(df) sd / sqrt(n).

    The interval that goes with `paired_t_test` (unit: training run); it describes the
    effect's size and decides no verdict. (nan, nan) with fewer than 2 pairs."""
    d = _finite_1d(config_values, "config_values") - _finite_1d(baseline_values, "baseline_values")
    if d.size < 2:
        return math.nan, math.nan
    half = t_quantile(1 - (1 - confidence) / 2, d.size - 1) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return float(d.mean()) - half, float(d.mean()) + half


def paired_mean_bootstrap(
    config_values, baseline_values, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """Mean paired difference of continuous per-example values and its bootstrap interval.

    Values are `(n,)` or `(n_seeds, n)` (e.g. per-question NLL of each seed's model, the
    baseline of the same seed in the same row); seeds are averaged per example, then
    examples are resampled. Returns {"delta", "ci_low", "ci_high", "n"} (n = examples).
    For a loss, a negative delta whose interval lies below zero means the config is better.
    """
    a = np.atleast_2d(np.asarray(config_values, dtype=float))
    b = np.atleast_2d(np.asarray(baseline_values, dtype=float))
    if a.shape != b.shape or a.size == 0 or a.ndim != 2:
        raise ValueError(
            f"paired values need equal, non-empty (n,) or (n_seeds, n) shapes; got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired values must be finite (drop examples without labelled tokens first)")
    per_example = (a - b).mean(axis=0)
    low, high = _bootstrap_ci(per_example, n_boot, confidence, seed)
    return {"delta": float(per_example.mean()), "ci_low": low, "ci_high": high, "n": int(per_example.size)}


# --- What is written: each number to the digits it can support ------------------------------


def reported(name: str, value):
    """`value` as tracked files and logs write it, by what `name` measures: p-values to 3
    significant digits; accuracies, their differences and intervals (k/n over at most a few
    thousand questions) and differences of NLLs to 4 decimals; NLLs, losses and everything
    else to 4 significant digits. Float noise from another CPU (the 7th digit) then changes
    nothing written, bar a value that lands on a rounding boundary. Only what is written:
    the statistics and the selection use the exact values. Ints, bools, None, non-finite
    values and non-numbers pass unchanged."""
    if isinstance(value, bool) or not isinstance(value, float) or not math.isfinite(value):
        return value
    last = name.rsplit("/", 1)[-1]  # a logged name: `validation/accuracy_strict`
    if "p_value" in last or last in ("p", "p_holm") or last.endswith(("_p", "_p_holm")):
        return float(f"{value:.3g}")
    if any(part in last for part in ("delta", "ci_low", "ci_high")) or "accuracy" in last:
        return round(value, 4) + 0.0  # + 0.0: no -0.0
    return float(f"{value:.4g}")
