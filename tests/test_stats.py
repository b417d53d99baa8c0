"""Paired statistics against hand-computed and brute-force references."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.stats import holm_adjust, mcnemar_exact, paired_bootstrap


def brute_force_mcnemar(wins: int, losses: int) -> float:
    """P(outcome at least as extreme as observed) under Binomial(n, 1/2), by enumeration."""
    n = wins + losses
    if n == 0:
        return 1.0
    probs = [math.comb(n, i) / 2**n for i in range(n + 1)]
    observed = probs[wins]
    return min(1.0, sum(p for p in probs if p <= observed + 1e-15))


@given(st.integers(0, 25), st.integers(0, 25), st.integers(0, 10))
def test_mcnemar_matches_enumeration(wins, losses, ties):
    a = np.array([1] * wins + [0] * losses + [1] * ties, dtype=bool)
    b = np.array([0] * wins + [1] * losses + [1] * ties, dtype=bool)
    assert mcnemar_exact(a, b) == pytest.approx(brute_force_mcnemar(wins, losses))


def test_mcnemar_known_value():
    # 10 wins, 0 losses: p = 2 / 2**10
    assert mcnemar_exact(np.ones(10, bool), np.zeros(10, bool)) == pytest.approx(2 / 1024)


def test_bootstrap_detects_a_clear_win_and_a_tie():
    rng = np.random.default_rng(0)
    base = rng.random((2, 400)) < 0.3
    better = base | (rng.random((2, 400)) < 0.5)
    result = paired_bootstrap(better, base)
    assert result.delta > 0.2 and result.ci_low > 0 and result.verdict == "better"
    assert result.p_value < 1e-6 and result.n_seeds == 2 and result.n_questions == 400
    same = paired_bootstrap(base, base)
    assert same.delta == 0 and same.ci_low == 0 == same.ci_high and same.verdict == "no significant difference"
    assert paired_bootstrap(base, better).verdict == "worse"


def test_bootstrap_delta_is_the_seed_mean_difference():
    a = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
    b = np.array([[0, 1, 0, 0], [0, 0, 0, 0]], bool)
    assert paired_bootstrap(a, b).delta == pytest.approx(((2 - 1) / 4 + (1 - 0) / 4) / 2)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="equal, non-empty shapes"):
        paired_bootstrap(np.ones((1, 3)), np.ones((1, 4)))


def _holm_by_definition(p: list[float]) -> list[float]:
    """Holm (1979) step-down, written from the definition: reject H_(1..k) while
    p_(i) <= alpha / (m - i + 1); the adjusted p of H_(i) is the smallest alpha that rejects it."""
    m = len(p)
    ranked = sorted(p)
    out = []
    for value in p:
        i = ranked.index(value)  # ties share the first rank: the same adjusted value
        out.append(min(1.0, max((m - j) * ranked[j] for j in range(i + 1))))
    return out


@given(st.lists(st.floats(0, 1), min_size=0, max_size=12))
def test_holm_matches_its_definition(p_values):
    adjusted = holm_adjust(p_values)
    assert adjusted == pytest.approx(_holm_by_definition(p_values))
    assert all(raw <= adj <= 1 for raw, adj in zip(p_values, adjusted))


def test_holm_known_values():
    # Holm's worked example shape: m = 4, sorted p 0.01, 0.02, 0.03, 0.04 -> 0.04, 0.06, 0.06, 0.06.
    assert holm_adjust([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert holm_adjust([0.5]) == [0.5] and holm_adjust([]) == []
