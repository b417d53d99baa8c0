"""Collapse diagnostics: RankMe against its formula and known spectra, the warning rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stepjepa.method.diagnostics import (
    COLLAPSED_SPREAD,
    JEPA_LOSS_ZERO,
    collapse_warnings,
    effective_rank,
    view_diagnostics,
)
from stepjepa.method.losses import LOSS_KINDS, jepa_loss


def rankme_by_formula(x: np.ndarray) -> float:
    """Garrido et al. (2023), eq. 1: p_k = sigma_k / ||sigma||_1 + eps, RankMe = exp(-sum p_k log p_k)."""
    sigma = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    p = sigma / np.abs(sigma).sum() + 1e-7
    return float(np.exp(-np.sum(p * np.log(p))))


@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31), st.floats(0.01, 100))
def test_effective_rank_matches_the_formula_and_its_bounds(n, d, seed, scale):
    x = np.random.default_rng(seed).normal(size=(n, d)) * scale
    rank = effective_rank(x)
    assert rank == pytest.approx(rankme_by_formula(x), rel=1e-9)
    assert 1.0 - 1e-6 <= rank <= min(n, d) * (1 + 1e-5)
    assert effective_rank(torch.from_numpy(x).float()) == pytest.approx(rank, rel=1e-4)


def test_effective_rank_known_cases():
    rng = np.random.default_rng(0)
    assert effective_rank(np.outer(rng.normal(size=50), rng.normal(size=16))) == pytest.approx(1.0, abs=1e-4)
    assert effective_rank(np.eye(16)) == pytest.approx(16, rel=1e-5)
    assert effective_rank(3 * np.eye(20)[:, :8]) == pytest.approx(8, rel=1e-5)  # isotropic, n > d
    q, _ = np.linalg.qr(rng.normal(size=(32, 32)))
    assert effective_rank(np.eye(32)[:4] @ q) == pytest.approx(4, rel=1e-5)  # rotation-invariant
    assert effective_rank(np.zeros((5, 3))) == 0.0 and effective_rank(np.zeros((0, 3))) == 0.0
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        effective_rank(np.ones(3))


def collapsed_views(n: int = 32, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Every example maps to the same vector, in both views: the trivial JEPA optimum."""
    v = torch.randn(d, generator=torch.Generator().manual_seed(0))
    return v.repeat(n, 1), v.repeat(n, 1)


def random_views(n: int = 32, d: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_view_diagnostics_values(kind):
    a, b = random_views()
    diag = view_diagnostics(a, b, loss_kind=kind, temperature=0.1)
    assert diag["n_pairs"] == 32 and abs(diag["mean_cos"]) < 0.2
    assert diag["jepa_loss"] == pytest.approx(float(jepa_loss(a, b, kind, 0.1)))
    assert diag["rank_view1"] == pytest.approx(rankme_by_formula(a.numpy()), rel=1e-5) and diag["rank_view2"] > 20
    same = view_diagnostics(*collapsed_views(), loss_kind="cosine")
    assert same["mean_cos"] == pytest.approx(1.0) and same["jepa_loss"] == pytest.approx(0.0, abs=1e-6)
    assert same["rank_view1"] == pytest.approx(1.0, abs=1e-3) == same["rank_view2"]
    assert same["spread_view1"] == pytest.approx(0.0, abs=1e-9) and diag["spread_view1"] > 0.9


def test_view_diagnostics_without_pairs_is_nan_not_an_error():
    diag = view_diagnostics(torch.zeros(0, 8), torch.zeros(0, 8))
    assert diag["n_pairs"] == 0 and all(math.isnan(v) for k, v in diag.items() if k != "n_pairs")
    assert collapse_warnings(diag, []) == []


def test_collapsed_views_warn_and_random_views_do_not():
    warnings = collapse_warnings(view_diagnostics(*collapsed_views()), [])
    assert len(warnings) == 2 and all("effective rank" in w and "32 held-out pairs" in w for w in warnings)
    assert collapse_warnings(view_diagnostics(*random_views()), []) == []
    assert collapse_warnings(None, []) == []
    # Only view 1 collapsed (a predictor that outputs a constant): one warning, naming it.
    a, _ = collapsed_views()
    (warning,) = collapse_warnings(view_diagnostics(a, random_views()[1]), [])
    assert "view 1" in warning and f"< {COLLAPSED_SPREAD:g}" in warning


def test_too_few_pairs_are_no_evidence_of_collapse():
    assert collapse_warnings(view_diagnostics(*collapsed_views(n=3)), []) == []


def history(jepa: list[float | None], lm: list[float]) -> list[dict]:
    return [
        {"step": 10 * (i + 1), "lm_loss": m} | ({"jepa_loss": j} if j is not None else {})
        for i, (j, m) in enumerate(zip(jepa, lm))
    ]


def test_history_rule():
    lm = [8.0, 7.5, 7.0, 6.0, 5.0, 4.0, 3.5, 3.0]
    healthy = history([0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.4], lm)
    assert collapse_warnings(None, healthy) == []
    collapsed = history([0.3, 1e-5, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6, 1e-6], lm)
    (warning,) = collapse_warnings(None, collapsed)
    assert "step 20" in warning and f"< {JEPA_LOSS_ZERO}" in warning and "7.5" in warning
    # Views that agree only once the LM has learned (late, low LM loss) are not the symptom.
    late = history([0.9, 0.8, 0.7, 0.5, 0.3, 0.1, 1e-4, 1e-5], lm)
    assert collapse_warnings(None, late) == []
    # Steps that did not apply JEPA (jepa_ratio < 1) log no jepa_loss and are skipped; order is by step.
    sparse = history([None, None, 1e-5, 0.5], [8.0, 7.9, 7.8, 7.7])
    assert len(collapse_warnings(None, list(reversed(sparse)))) == 1
    # InfoNCE near 0 means the views are told apart, not collapsed.
    assert collapse_warnings(None, collapsed, loss_kind="infonce") == []
    assert collapse_warnings(None, []) == []


def _train(model, rows: list[dict], predictor_ids: list[int], pad_id: int, *, gamma: float, steps: int) -> list[dict]:
    """A few optimizer steps of `gamma * LM + JEPA` (cosine, inline, k = 1); the logged history."""
    from stepjepa.method.collate import collate
    from stepjepa.method.forward import step_jepa_forward

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    logged = []
    for step in range(1, steps + 1):
        batch = collate(
            [rows[(step * 8 + i) % len(rows)] for i in range(8)],
            k=1,
            layout="inline",
            predictor_ids=predictor_ids,
            pad_id=pad_id,
        )
        out = step_jepa_forward(model, batch, layout="inline", gamma=gamma, lam=1.0)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        logged.append({"step": step, "lm_loss": float(out.lm_loss), "jepa_loss": float(out.jepa_loss)})
    return logged


@pytest.mark.e2e
def test_jepa_only_training_collapses_the_views_and_warns(tiny_model_dir, conversations):
    """The trivial optimum for real: without the LM loss the views of a tiny Llama align and
    their rank falls; an untrained model's views do not warn."""
    from transformers import AutoModelForCausalLM

    from stepjepa.data.tokenization import encode_records, load_tokenizer
    from stepjepa.evaluation.heldout import view_embeddings
    from stepjepa.model.modeling import add_predictor_tokens

    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = encode_records(tokenizer, conversations[:64], 256, "26 Jul 2024").to_pylist()
    train, validation = rows[:40], rows[40:]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = add_predictor_tokens(model, tokenizer, 1)
    kwargs = {"k": 1, "layout": "inline", "predictor_ids": ids, "pad_id": tokenizer.eos_token_id}
    fresh = view_diagnostics(*view_embeddings(model, validation, **kwargs))
    assert collapse_warnings(fresh, []) == [] and fresh["n_pairs"] >= 16
    logged = _train(model, train, ids, tokenizer.eos_token_id, gamma=0.0, steps=6)
    collapsed = view_diagnostics(*view_embeddings(model, validation, **kwargs))
    assert collapsed["mean_cos"] > 0.99 and collapsed["spread_view1"] < COLLAPSED_SPREAD
    assert any("effective rank of view 1" in w for w in collapse_warnings(collapsed, logged))


# A sweep judges its runs' logged numbers (`stepjepa.sweep.report`) in a process that trains
# nothing itself: importing torch there only for these rules cost it ~1.5 CPU-s.
JUDGE = """
import sys
from stepjepa.method.diagnostics import collapse_warnings, relative_collapse_warnings
diag = {"n_pairs": 8, "spread_view1": 1e-5, "spread_view2": 1e-3, "rank_view1": 1.1, "rank_view2": 2.0}
history = [{"step": 1, "lm_loss": 8.0, "jepa_loss": 1e-4}]
sft = {"spread_view1": 1e-2, "spread_view2": 1e-3}
print(len(collapse_warnings(diag, history)), len(relative_collapse_warnings(diag, sft)))
print("torch" in sys.modules)
"""


@pytest.mark.cli
def test_the_warning_rules_judge_logged_numbers_without_importing_torch():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", JUDGE], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["2", "1", "False"], out.stdout + out.stderr
