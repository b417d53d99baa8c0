"""JEPA losses against their formulas in docs/step-jepa.md section 4."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjepa.method.losses import LOSS_KINDS, infonce, jepa_loss, mean_cosine


def views(v: int = 5, h: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, h, generator=g), torch.randn(v, h, generator=g)


def test_formulas_row_by_row() -> None:
    a, b = views()
    cos = [float(a[i] @ b[i] / (a[i].norm() * b[i].norm())) for i in range(len(a))]
    assert jepa_loss(a, b, "cosine").item() == pytest.approx(1 - sum(cos) / len(cos), rel=1e-5)
    assert mean_cosine(a, b).item() == pytest.approx(sum(cos) / len(cos), abs=1e-6)
    l2 = [float((a[i] - b[i]).pow(2).sum().sqrt()) for i in range(len(a))]
    assert jepa_loss(a, b, "l2").item() == pytest.approx(sum(l2) / len(l2), rel=1e-5)
    assert jepa_loss(a, b, "mse").item() == pytest.approx(float(((a - b) ** 2).sum()) / a.numel(), rel=1e-5)


def test_infonce_is_cross_entropy_against_the_diagonal() -> None:
    a, b = views()
    tau = 0.07
    total = 0.0
    for i in range(len(a)):
        sims = [float(a[i] @ b[j] / (a[i].norm() * b[j].norm())) / tau for j in range(len(b))]
        top = max(sims)
        log_z = top + math.log(sum(math.exp(s - top) for s in sims))
        total += log_z - sims[i]
    assert jepa_loss(a, b, "infonce", temperature=tau).item() == pytest.approx(total / len(a), rel=1e-4)
    assert infonce(a, b, 0.5).item() != pytest.approx(infonce(a, b, 0.07).item())
    assert infonce(a[:1], b[:1], 0.07).item() == 0.0  # one pair: no negatives


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(LOSS_KINDS), v=st.integers(1, 6), seed=st.integers(0, 1000))
def test_identical_views_and_gradients(kind: str, v: int, seed: int) -> None:
    a, _ = views(v, 16, seed)
    a.requires_grad_(True)
    loss = jepa_loss(a, a.detach().clone(), kind)
    if kind != "infonce":  # infonce of identical views is > 0 when other rows are similar too
        assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(a.grad).all()


def test_low_precision_views_are_computed_in_float32() -> None:
    a, b = views()
    for kind in LOSS_KINDS:
        got = jepa_loss(a.bfloat16(), b.bfloat16(), kind)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(jepa_loss(a.bfloat16().float(), b.bfloat16().float(), kind).item())


def test_bad_values_name_the_parameter() -> None:
    a, b = views()
    with pytest.raises(ValueError, match="loss kind"):
        jepa_loss(a, b, "cos")
    with pytest.raises(ValueError, match="temperature"):
        jepa_loss(a, b, "infonce", temperature=0.0)
    with pytest.raises(ValueError, match=r"\(V, H\)"):
        jepa_loss(a, b[:2], "cosine")
    with pytest.raises(ValueError, match="at least one"):
        jepa_loss(a[:0], b[:0], "mse")


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_losses_stay_float32_under_bf16_autocast(kind: str) -> None:
    """`train.precision: bf16` runs the forward pass under autocast: the JEPA loss of bf16
    views must still be the float32 loss of those views (infonce's matmul included)."""
    a, b = (v.bfloat16() for v in views(v=16, h=64, seed=3))
    want = jepa_loss(a.float(), b.float(), kind), mean_cosine(a.float(), b.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = jepa_loss(a, b, kind), mean_cosine(a, b)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        assert torch.equal(g, w)
