"""The verdict's false-positive rate when nothing works: simulated sweeps through `summarize`.

Each simulated sweep has SFT and 4 configs, 3-5 seeds and 200-500 validation questions, and
no config has any true effect. What varies is what varies in real sweeps: each question has
its own difficulty, each training run shifts the accuracy of all questions (sd 0.03-0.06 per
run, plus a part shared by the runs of one seed: same data order and initial weights), and
each answer is a coin flip given those. A verdict rule that holds the trained models fixed
(a bootstrap over questions, McNemar) called three sweeps in four "better" or "worse"
somewhere (36% of the configs); the seed-level rule (paired t-test over seeds, Holm over the configs) must stay
at or under its 5% family-wise level.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from stepjepa.config import SweepConfig
from stepjepa.stats import paired_bootstrap
from stepjepa.sweep import report
from stepjepa.sweep.specs import RunResult, expand_grid

CONFIGS = SweepConfig(ks=[1, 2], lambdas=[0.1, 1.0], seeds=[0])


def simulate_null_sweep(rng: np.random.Generator) -> list[RunResult]:
    """Run results of one sweep where no config
    differs from SFT in expectation."""
    n_seeds, n_questions = int(rng.integers(3, 6)), int(rng.integers(200, 501))
    run_sd, seed_sd = rng.uniform(0.03, 0.06), 0.02
    difficulty = rng.beta(2, 2, n_questions)  # each question's chance of being solved
    specs = expand_grid(CONFIGS.model_copy(update={"seeds": list(range(n_seeds))}))
    seed_shift = rng.normal(0, seed_sd, n_seeds)
    shift = np.array([seed_shift[s.seed] for s in specs]) + rng.normal(0, run_sd, len(specs))
    correct = rng.random((len(specs), n_questions)) < np.clip(difficulty + shift[:, None], 0, 1)
    return [
        RunResult(spec, "completed", correct_strict=row, metrics={"accuracy_strict": float(row.mean())})
        for spec, row in zip(specs, correct, strict=True)
    ]


def false_verdict_rates(n_sweeps: int, seed: int) -> tuple[float, float]:
    """(share of sweeps with any "better"/"worse" verdict, share of configs given one)."""
    rng = np.random.default_rng(seed)
    any_verdict, verdicts, configs = 0, 0, 0
    for _ in range(n_sweeps):
        rows = [r for r in report.summarize(simulate_null_sweep(rng)) if r["config"] != "sft"]
        claimed = sum(r["vs_sft_verdict"] in ("better", "worse") for r in rows)
        any_verdict, verdicts, configs = any_verdict + (claimed > 0), verdicts + claimed, configs + len(rows)
    return any_verdict / n_sweeps, verdicts / configs


def _consistent_with_at_most(rate: float, hits: int, n: int, level: float = 0.01) -> bool:
    """Whether `hits` of `n` is no evidence (one-sided exact binomial test at `level`) of a
    true rate above `rate`: P(Binomial(n, rate) >= hits) >= level."""
    return sum(math.comb(n, i) * rate**i * (1 - rate) ** (n - i) for i in range(hits, n + 1)) >= level


def test_no_true_effect_rarely_gets_a_verdict(monkeypatch):
    """Holm over exact tests bounds the share of sweeps with any false verdict at 5%, whatever
    the dependence between configs; 17,000 simulated sweeps put it at 4.4% here (0.15% standard
    error). A sample of 800 lands within about 1.5% of that, either side, so the family-wise
    share is checked for being no evidence of more than 5%; the share of configs is checked
    against 5% as it is (about 1.2%: Holm divides 5% among the 4 configs). The rule that held
    the trained models fixed gave 75% of these 800 sweeps, and 36% of their configs, a verdict."""
    # The per-question interval is a column, not what this test measures: fewer resamples keep
    # 800 sweeps to seconds (the old rule's verdict used it; at 200 resamples it is as wrong).
    monkeypatch.setattr(report, "paired_bootstrap", functools.partial(paired_bootstrap, n_boot=200))
    n_sweeps = 800
    per_sweep, per_config = false_verdict_rates(n_sweeps, seed=0)
    message = f"{per_sweep:.1%} of sweeps without any true effect got a verdict ({per_config:.1%} of configs)"
    assert per_config <= 0.05, message
    assert _consistent_with_at_most(0.05, round(per_sweep * n_sweeps), n_sweeps), message
