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
    assert result.delta > 0.2 and result.ci_low > 0
    assert result.p_value < 1e-6 and result.n_seeds == 2 and result.n_questions == 400
    same = paired_bootstrap(base, base)
    assert same.delta == 0 and same.ci_low == 0 == same.ci_high
    assert paired_bootstrap(base, better).ci_high < 0
    # The interval holds the models fixed: it decides no verdict (that is `seed_verdicts`').
    assert not hasattr(result, "verdict") and "verdict" not in result.as_dict()


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


# --- across seeds and continuous per-example values (issue 11) ---------------------------

import statistics  # noqa: E402

from hypothesis import assume, settings  # noqa: E402

from stepjepa.stats import benjamini_hochberg, mean_std, paired_mean_bootstrap, paired_t_test  # noqa: E402


def _scipy_stats():
    """scipy is a test-only reference (the dev extra); the library never imports it."""
    return pytest.importorskip("scipy.stats")


scores = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


@given(st.lists(scores, min_size=1, max_size=10))
def test_mean_std_matches_the_statistics_module(values):
    mean, std = mean_std(values)
    assert mean == pytest.approx(statistics.fmean(values), abs=1e-12)
    assert std == pytest.approx(statistics.stdev(values) if len(values) > 1 else 0.0, abs=1e-9)


def test_mean_std_rejects_nothing_and_nan():
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])
    with pytest.raises(ValueError, match="finite"):
        mean_std([0.5, float("nan")])


def _t_by_definition(a: list[float], b: list[float]) -> float:
    d = [x - y for x, y in zip(a, b)]
    return statistics.fmean(d) / (statistics.stdev(d) / math.sqrt(len(d)))


@settings(deadline=None)  # the first call imports scipy (seconds on a busy machine)
@given(st.lists(st.tuples(scores, scores), min_size=2, max_size=12), st.sampled_from(["greater", "less", "two-sided"]))
def test_paired_t_test_matches_scipy(pairs, alternative):
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    d = np.subtract(a, b)
    assume(d.std(ddof=1) > 1e-6 * max(1.0, np.abs(d).max()))
    t, p = paired_t_test(a, b, alternative)
    ref = _scipy_stats().ttest_rel(a, b, alternative=alternative)
    assert t == pytest.approx(_t_by_definition(a, b), rel=1e-9, abs=1e-9)
    assert t == pytest.approx(ref.statistic, rel=1e-9, abs=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_paired_t_test_known_value_and_no_information_cases():
    # The LLM-JEPA paper's shape: 5 seeds. d = 1..5: t = 3 / (sqrt(2.5) / sqrt(5)) = sqrt(18), df 4, and
    # by hand P(T > t) = (1 - sin(theta) (1 + cos^2(theta) / 2)) / 2 with cos^2 = 4 / 22: 0.0066178.
    t, p = paired_t_test([2, 3, 4, 5, 6], [1, 1, 1, 1, 1])
    assert t == pytest.approx(math.sqrt(18)) and p == pytest.approx((1 - math.sqrt(18 / 22) * 12 / 11) / 2)
    assert p == pytest.approx(0.0066178, rel=1e-4)
    assert math.isnan(paired_t_test([0.3], [0.1])[0]) and paired_t_test([0.3], [0.1])[1] == 1.0
    t, p = paired_t_test([0.3, 0.4, 0.5], [0.2, 0.3, 0.4])  # identical differences (0.1 up to rounding)
    assert math.isnan(t) and p == 1.0
    # Two more correct answers out of 185 on both seeds: equal differences, rounded apart by
    # an ulp of the accuracies (not of the difference); found by test_seed_verdicts_match_scipy_and_holm.
    t, p = paired_t_test([2 / 185, 93 / 185], [0, 91 / 185])
    assert math.isnan(t) and p == 1.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_test([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="alternative"):
        paired_t_test([1, 2], [0, 0], "bigger")


@settings(deadline=None)  # the first call imports scipy (seconds on a busy machine)
@given(st.integers(1, 40), st.floats(-8, 8))
def test_t_tail_matches_scipy_for_every_df(df, t):
    from stepjepa.stats import _t_sf

    assert _t_sf(t, df) == pytest.approx(_scipy_stats().t.sf(t, df), rel=1e-7, abs=1e-13)


@given(st.lists(st.tuples(scores, scores), min_size=1, max_size=30), st.integers(0, 3))
def test_mean_bootstrap_is_paired_and_symmetric(pairs, seed):
    a, b = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    out = paired_mean_bootstrap(a, b, n_boot=200, seed=seed)
    assert out["n"] == len(pairs) and out["delta"] == pytest.approx(float(np.mean(a - b)), abs=1e-9)
    assert out["ci_low"] <= out["ci_high"]
    assert min(a - b) - 1e-9 <= out["ci_low"] and out["ci_high"] <= max(a - b) + 1e-9
    swapped = paired_mean_bootstrap(b, a, n_boot=200, seed=seed)  # same resamples, negated
    assert swapped["ci_low"] == pytest.approx(-out["ci_high"], abs=1e-9)
    assert swapped["ci_high"] == pytest.approx(-out["ci_low"], abs=1e-9)
    shifted = paired_mean_bootstrap(a + 1.5, b, n_boot=200, seed=seed)  # only differences matter
    assert shifted["ci_low"] == pytest.approx(out["ci_low"] + 1.5, abs=1e-9)


def test_mean_bootstrap_interval_matches_normal_theory_and_averages_seeds():
    rng = np.random.default_rng(1)
    base = rng.normal(2.0, 1.0, size=(3, 600))
    config = base + rng.normal(-0.2, 0.5, size=(3, 600))
    out = paired_mean_bootstrap(config, base)
    per_example = (config - base).mean(axis=0)
    half = 1.96 * per_example.std(ddof=1) / math.sqrt(per_example.size)
    assert out["delta"] == pytest.approx(per_example.mean()) and out["n"] == 600
    assert out["ci_high"] - out["ci_low"] == pytest.approx(2 * half, rel=0.1)
    assert out["ci_high"] < 0, "a lower NLL everywhere is a significant improvement"
    with pytest.raises(ValueError, match="finite"):
        paired_mean_bootstrap([1.0, float("nan")], [1.0, 1.0])


def test_mean_bootstrap_agrees_with_the_accuracy_bootstrap_on_booleans():
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 50)) < 0.4, rng.random((2, 50)) < 0.3
    accuracy = paired_bootstrap(a, b, n_boot=500, seed=3)
    continuous = paired_mean_bootstrap(a.astype(float), b.astype(float), n_boot=500, seed=3)
    assert (continuous["delta"], continuous["ci_low"], continuous["ci_high"]) == pytest.approx(
        (accuracy.delta, accuracy.ci_low, accuracy.ci_high)
    )


def _bh_by_definition(p: list[float]) -> list[float]:
    """Benjamini-Hochberg (1995) from its step-up rule: H_i is rejected at level q iff some
    p_(j) >= p_i has p_(j) <= j q / m; its adjusted p is the smallest such q."""
    m, ranked = len(p), sorted(p)
    return [min(min(1.0, m * ranked[j] / (j + 1)) for j in range(m) if ranked[j] >= value) for value in p]


@settings(deadline=None)  # the first call imports scipy (seconds on a busy machine)
@given(st.lists(st.floats(0, 1), min_size=0, max_size=12))
def test_benjamini_hochberg_matches_its_definition_and_scipy(p_values):
    adjusted = benjamini_hochberg(p_values)
    assert adjusted == pytest.approx(_bh_by_definition(p_values))
    if p_values:
        assert adjusted == pytest.approx(list(_scipy_stats().false_discovery_control(p_values, method="bh")))
    assert all(raw - 1e-15 <= adj <= 1 for raw, adj in zip(p_values, adjusted))  # m * p / m may round down
    assert all(bh <= holm + 1e-12 for bh, holm in zip(adjusted, holm_adjust(p_values)))


# --- the verdict: paired t-test over seeds, Holm over the sweep (issue 29) --------------

from stepjepa.stats import ALPHA, MIN_SEEDS, seed_verdicts  # noqa: E402


def _verdicts_by_reference(pairs: list[tuple[list[int], list[int]]], questions: int) -> list[tuple[float, float, str]]:
    """(p, Holm p, verdict) per config from scipy's two-sided `ttest_rel` and Holm's definition.
    Scores are counts of correct answers over `questions`; differences that are all equal carry
    no information about their spread (scipy: nan), so p = 1."""
    ps = []
    for a, b in pairs:
        d = [x - y for x, y in zip(a, b)]
        if len(d) < 2 or len(set(d)) == 1:
            ps.append(1.0)
        else:
            ps.append(float(_scipy_stats().ttest_rel(np.divide(a, questions), np.divide(b, questions)).pvalue))
    out = []
    for (a, b), p, p_holm in zip(pairs, ps, _holm_by_definition(ps)):
        mean = sum(x - y for x, y in zip(a, b)) / max(len(a), 1)
        if len(a) < MIN_SEEDS:
            verdict = "too few seeds to tell"
        elif p_holm <= ALPHA:
            verdict = "better" if mean > 0 else "worse"
        else:
            verdict = "no significant difference"
        out.append((p, p_holm, verdict))
    return out


@st.composite
def sweeps(draw):
    """A sweep's per-seed correct counts: one SFT baseline, 1-8 configs (each SFT's counts
    shifted, give or take a few, so that every verdict turns up), some seeds missing."""
    questions = draw(st.integers(20, 500))
    n_seeds = draw(st.integers(0, 6))
    count = st.integers(0, questions)
    sft = draw(st.lists(count, min_size=n_seeds, max_size=n_seeds))
    pairs = []
    for _ in range(draw(st.integers(1, 8))):
        kept = draw(st.lists(st.booleans(), min_size=n_seeds, max_size=n_seeds))
        shift, jitter = draw(st.integers(-questions // 4, questions // 4)), draw(st.integers(0, 8))
        mine = [min(questions, max(0, s + shift + draw(st.integers(-jitter, jitter)))) for s in sft]
        pairs.append(([m for m, k in zip(mine, kept) if k], [s for s, k in zip(sft, kept) if k]))
    return questions, pairs


@settings(deadline=None, max_examples=300)  # the first call imports scipy (seconds on a busy machine)
@given(sweeps())
def test_seed_verdicts_match_scipy_and_holm(sweep):
    questions, pairs = sweep
    expected = _verdicts_by_reference(pairs, questions)
    assume(all(abs(p_holm - ALPHA) > 1e-6 for _, p_holm, _ in expected))  # no coin flips at the boundary
    got = seed_verdicts([(np.divide(a, questions), np.divide(b, questions)) for a, b in pairs])
    assert [g.verdict for g in got] == [e[2] for e in expected]
    assert [g.p_value for g in got] == pytest.approx([e[0] for e in expected], rel=1e-6, abs=1e-12)
    assert [g.p_holm for g in got] == pytest.approx([e[1] for e in expected], rel=1e-6, abs=1e-12)
    assert [g.n_seeds for g in got] == [len(a) for a, _ in pairs]


@settings(deadline=None)
@given(st.integers(0, 400), st.integers(0, 400), st.integers(0, 50))
def test_mcnemar_matches_scipy_binomtest(wins, losses, ties):
    a = np.array([1] * wins + [0] * losses + [1] * ties, dtype=bool)
    b = np.array([0] * wins + [1] * losses + [1] * ties, dtype=bool)
    expected = 1.0 if wins + losses == 0 else _scipy_stats().binomtest(wins, wins + losses, 0.5).pvalue
    assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_a_real_effect_of_a_few_points_is_found_with_5_seeds():
    """Not merely silent: +0.08 on every seed (run sd 0.04) among 3 configs of no effect is
    "better" in most sweeps and never "worse"; the configs of no effect rarely get a verdict."""
    rng = np.random.default_rng(1)
    sft = 0.5 + rng.normal(0, 0.04, (200, 5))
    configs = [sft + rng.normal(0, 0.04, (200, 5)) for _ in range(3)] + [sft + 0.08 + rng.normal(0, 0.04, (200, 5))]
    verdicts = [v.verdict for i in range(200) for v in seed_verdicts([(c[i], sft[i]) for c in configs])]
    found, null = verdicts[3::4], [v for i, v in enumerate(verdicts) if i % 4 != 3]
    assert found.count("better") / len(found) > 0.5 and "worse" not in found
    assert sum(v in ("better", "worse") for v in null) / len(null) < 0.05


@pytest.mark.parametrize("n_seeds", [0, 1, 2])
def test_fewer_than_3_seeds_never_get_a_verdict(n_seeds):
    rng = np.random.default_rng(n_seeds)
    sft = rng.random(n_seeds)
    verdicts = seed_verdicts([(sft + 0.5, sft), (sft - 0.5, sft), (sft + rng.normal(0, 0.1, n_seeds), sft)])
    assert {v.verdict for v in verdicts} == {"too few seeds to tell"}
    assert all(v.p_holm == 1.0 for v in verdicts) if n_seeds < 2 else True


def test_verdict_known_values():
    # 3 seeds, d = 0.05, 0.06, 0.07: t = 0.06 / (0.01 / sqrt 3) = 6 sqrt 3, df 2; P(|T| > t) = 1 - t / sqrt(t^2 + 2).
    t = 6 * math.sqrt(3)
    (one,) = seed_verdicts([([0.55, 0.56, 0.57], [0.5, 0.5, 0.5])])
    assert one.t == pytest.approx(t) and one.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert (
        one.p_value == pytest.approx(0.009133, rel=1e-3)
        and one.verdict == "better"
        and one.delta == pytest.approx(0.06)
    )
    # The same config in a sweep of 9: Holm multiplies the smallest p by 9 -> 0.083, no verdict.
    nine = seed_verdicts([([0.55, 0.56, 0.57], [0.5, 0.5, 0.5])] + [([0.5, 0.6, 0.4], [0.5, 0.5, 0.5])] * 8)
    assert nine[0].p_holm == pytest.approx(9 * one.p_value) and nine[0].verdict == "no significant difference"
    (worse,) = seed_verdicts([([0.5, 0.5, 0.5], [0.55, 0.56, 0.57])])
    assert worse.verdict == "worse" and worse.p_value == pytest.approx(one.p_value)


def test_t_quantiles_and_the_paired_t_interval_match_tables():
    from stepjepa.stats import paired_t_interval, t_quantile

    for df, q in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)]:  # two-sided 95% table values
        assert abs(t_quantile(0.975, df) - q) < 1e-4
    low, high = paired_t_interval([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    half = 3.1824 * (5 / 3) ** 0.5 / 2  # t(0.975, 3) sd / sqrt(4)
    assert abs(low - (2.5 - half)) < 1e-3 and abs(high - (2.5 + half)) < 1e-3
    assert all(x != x for x in paired_t_interval([1.0], [0.0]))  # nan: one pair has no spread


def test_numbers_are_written_to_the_digits_they_can_support():
    from stepjepa.stats import reported

    assert reported("accuracy_strict", 0.123456789) == 0.1235
    assert reported("vs_sft_delta", -0.0000301) == 0.0, "no -0.0"
    assert reported("validation/step2_nll", 5.33049999) == 5.33 and reported("nll", 12.3456) == 12.35
    assert reported("vs_sft_step2_nll_ci_low", -0.081234) == -0.0812
    assert reported("vs_sft_p_value", 0.0123456) == 0.0123 and reported("p_holm", 1.23456e-9) == 1.23e-9
    assert reported("vs_sft_t_p", 0.98765) == 0.988
    assert reported("mean_cos", 0.99987654) == 0.9999
    for same in (3, True, None, float("nan"), "better"):
        assert reported("accuracy_strict", same) is same
