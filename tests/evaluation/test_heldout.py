"""Held-out NLL and JEPA views on real tiny Llamas, against one-row-at-a-time references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stepjepa.evaluation.heldout import heldout_nll, view_embeddings
from stepjepa.method.collate import collate
from stepjepa.method.forward import model_parts, step_jepa_forward
from stepjepa.method.losses import jepa_loss
from tests.support.tiny_llama import PRED, ROWS, row

# `model` (sdpa and eager) is a fixture in conftest.py.

# Ragged rows: with and without a pair, Step 2 ending the row, one with no labelled token.
RAGGED = ROWS + [
    row([1, 2, 3, 4, 5, 6, 7], [60, 61], [62, 63, 64], [65]),
    {"input_ids": [7, 8, 9], "labels": [-100] * 3, "step1_span": None, "step2_span": None, "jepa_valid": False},
    row([9], [66], [67], [68, 69, 70, 71, 72, 73, 74, 75]),
]


@torch.no_grad()
def reference_nll(model, r: dict) -> dict:
    """One row alone through transformers' own forward; log-softmax by hand."""
    ids = torch.tensor([r["input_ids"]])
    logp = F.log_softmax(model(input_ids=ids, use_cache=False).logits[0].double(), dim=-1)
    token_nll = {
        t: -float(logp[t - 1, r["input_ids"][t]]) for t in range(1, len(r["input_ids"])) if r["labels"][t] != -100
    }
    step2 = [t for t in token_nll if r["jepa_valid"] and r["step2_span"][0] <= t <= r["step2_span"][1]]
    return {
        "nll": sum(token_nll.values()) / len(token_nll) if token_nll else math.nan,
        "tokens": len(token_nll),
        "step2_nll": sum(token_nll[t] for t in step2) / len(step2) if step2 else None,
        "step2_tokens": len(step2),
    }


def assert_same(got: list[dict], want: list[dict], tol: float = 1e-5) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["tokens"] == w["tokens"] and g["step2_tokens"] == w["step2_tokens"]
        assert (g["step2_nll"] is None) == (w["step2_nll"] is None)
        if w["tokens"]:
            assert g["nll"] == pytest.approx(w["nll"], abs=tol)
        else:
            assert math.isnan(g["nll"])
        if w["step2_nll"] is not None:
            assert g["step2_nll"] == pytest.approx(w["step2_nll"], abs=tol)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_heldout_nll_matches_a_row_by_row_reference(model, batch_size: int) -> None:
    got = heldout_nll(model, RAGGED, pad_id=0, batch_size=batch_size)
    assert_same(got, [reference_nll(model, r) for r in RAGGED])
    assert got[0]["step2_tokens"] == 4 and got[1]["step2_nll"] is None and got[5]["tokens"] == 0


def test_heldout_nll_is_batch_size_invariant_and_restores_the_mode(model) -> None:
    model.train()
    try:
        one = heldout_nll(model, RAGGED, pad_id=0, batch_size=1)
        assert model.training, "the previous (train) mode comes back"
        assert_same(heldout_nll(model, RAGGED, pad_id=0, batch_size=4), one, tol=2e-6)
    finally:
        model.eval()
    assert not model.training and heldout_nll(model, [], pad_id=0) == []


def test_heldout_nll_on_real_tokenised_rows(tiny_model_dir, conversations) -> None:
    from transformers import AutoModelForCausalLM

    from stepjepa.data.tokenization import encode_records, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    rows = encode_records(tokenizer, conversations[:6], 256, "26 Jul 2024").to_pylist()
    real = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    got = heldout_nll(real, rows, pad_id=tokenizer.eos_token_id, batch_size=4)
    assert_same(got, [reference_nll(real, r) for r in rows])
    assert all(g["step2_tokens"] > 0 for g, r in zip(got, rows) if r["jepa_valid"])


@torch.no_grad()
def training_views(model, rows: list[dict], k: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The views exactly as `step_jepa_forward` gathers them for one training batch."""
    from stepjepa.method.forward import gather_views, last_hidden

    batch, parts = collate(rows, k=k, layout=layout, predictor_ids=PRED[:k], pad_id=0), model_parts(model)
    hidden = last_hidden(parts, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    return gather_views(hidden, batch, batch["jepa_valid"].nonzero().flatten())


@pytest.mark.parametrize("layout", ["inline", "packed"])
@pytest.mark.parametrize("k", range(4))
def test_view_embeddings_are_the_training_views(model, k: int, layout: str) -> None:
    rows = RAGGED
    v1, v2 = view_embeddings(model, rows, k=k, layout=layout, predictor_ids=PRED[:k], pad_id=0, batch_size=2)
    w1, w2 = training_views(model, rows, k, layout)
    assert v1.dtype == torch.float32 and v1.shape == w1.shape == (sum(r["jepa_valid"] for r in rows), 64)
    torch.testing.assert_close(v1, w1, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(v2, w2, atol=2e-5, rtol=1e-5)
    out = step_jepa_forward(
        model, collate(rows, k=k, layout=layout, predictor_ids=PRED[:k], pad_id=0), layout=layout, lam=1.0
    )
    torch.testing.assert_close(jepa_loss(v1, v2), out.jepa_loss, atol=2e-5, rtol=1e-5)


def test_view_embeddings_two_pass_and_no_pairs(model) -> None:
    v1, v2 = view_embeddings(model, RAGGED, k=2, layout="two_pass", predictor_ids=PRED[:2], pad_id=0)
    w1, w2 = training_views(model, RAGGED, 2, "inline")  # two_pass's JEPA pass is the inline one
    torch.testing.assert_close(v1, w1, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(v2, w2, atol=2e-5, rtol=1e-5)
    e1, e2 = view_embeddings(model, [RAGGED[1]], k=1, layout="inline", predictor_ids=PRED[:1], pad_id=0)
    assert e1.shape == e2.shape == (0, 64)
    with pytest.raises(ValueError, match="layout"):
        view_embeddings(model, RAGGED, k=1, layout="packd", predictor_ids=PRED[:1], pad_id=0)
