"""One training step through a real tiny Llama (sdpa and eager), plain and LoRA-wrapped."""

from __future__ import annotations

import pytest
import torch

from stepjepa.method.forward import last_hidden, model_parts, step_jepa_forward
from tests.support.tiny_llama import PRED, ROWS, batch_for, row, sft_loss, tiny_llama, views

LAYOUTS = ("inline", "two_pass", "packed")

# `model` (sdpa and eager) is a fixture in conftest.py.


@pytest.mark.parametrize("k", range(4))
def test_views_agree_across_layouts(model, k: int) -> None:
    v1, v2 = views(model, ROWS, k, "inline")
    assert v1.shape == (3, 64)
    for layout in ("two_pass", "packed"):
        w1, w2 = views(model, ROWS, k, layout)
        torch.testing.assert_close(w1, v1, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(w2, v2, atol=2e-5, rtol=1e-5)
    assert not torch.allclose(v1, v2, atol=1e-3), "the two views are different states"


@pytest.mark.parametrize("kind", ["cosine", "l2", "mse", "infonce"])
def test_losses_agree_across_layouts_and_packed_lm_is_sft(model, kind: str) -> None:
    sft = sft_loss(model, ROWS)
    outs = {
        layout: step_jepa_forward(model, batch_for(ROWS, 2, layout), layout=layout, loss_kind=kind, gamma=0.7, lam=0.3)
        for layout in LAYOUTS
    }
    for out in outs.values():
        assert out.n_valid == 3 and torch.isfinite(out.loss)
        torch.testing.assert_close(out.jepa_loss, outs["inline"].jepa_loss, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(out.loss.detach(), 0.7 * out.lm_loss + 0.3 * out.jepa_loss)
    torch.testing.assert_close(outs["packed"].lm_loss, sft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["two_pass"].lm_loss, sft, atol=1e-5, rtol=1e-5)
    assert abs(outs["inline"].lm_loss - sft) > 1e-3, "inline isolates Step 2 in the LM stream too"


def test_batches_without_jepa_are_plain_sft(model) -> None:
    sft = sft_loss(model, ROWS)
    for layout in LAYOUTS:
        for kwargs in ({"apply_jepa": False}, {"lam": 0.0}):
            out = step_jepa_forward(model, batch_for(ROWS, 3, layout), layout=layout, **kwargs)
            torch.testing.assert_close(out.lm_loss, sft, atol=1e-5, rtol=1e-5)
            assert out.n_valid == 0 and out.mean_cos is None and out.jepa_loss == 0
    invalid = [ROWS[1], row([1, 2], [], [], [3, 4, 5])]
    out = step_jepa_forward(model, batch_for(invalid, 2, "inline"), layout="inline", gamma=2.0, lam=5.0)
    assert out.n_valid == 0 and out.mean_cos is None and out.jepa_loss == 0
    torch.testing.assert_close(out.loss.detach(), 2.0 * sft_loss(model, invalid))


@torch.no_grad()
def test_isolation_of_step2(model) -> None:
    parts = model_parts(model)

    def hidden(r: dict, layout: str = "inline") -> torch.Tensor:
        b = batch_for([r], 2, layout)
        return last_hidden(parts, b["input_ids"], b["attention_mask"], b["position_ids"])[0]

    base = row([10, 11, 12], [20, 21], [30, 31, 32], [40, 41])
    start = 3 + 2 + 2  # first Step-2 position: s1_end + K + 1
    for step2 in ([60, 61, 62], [60, 61, 62, 63, 64]):  # new Step-2 text, same or other length
        other = hidden(row([10, 11, 12], [20, 21], step2, [40, 41]))
        torch.testing.assert_close(other[:start], hidden(base)[:start], atol=1e-6, rtol=0)
        assert not torch.allclose(other[-1], hidden(base)[-1]), "Step 3+ does see Step 2"
    for layout in ("inline", "packed"):
        v2 = views(model, [base], 2, layout)[1]
        same_len = row([70, 71, 72], [80, 81], [30, 31, 32], [40, 41])
        torch.testing.assert_close(views(model, [same_len], 2, layout)[1], v2, atol=1e-6, rtol=0)
        longer = row([70, 71, 72, 73, 74], [80, 81, 82], [30, 31, 32], [90])  # shifted positions (RoPE is relative)
        torch.testing.assert_close(views(model, [longer], 2, layout)[1], v2, atol=2e-5, rtol=1e-4)
        assert not torch.allclose(views(model, [same_len], 2, layout)[0], views(model, [base], 2, layout)[0])


def test_k0_view1_is_step1_end_of_a_plain_pass(model) -> None:
    batch, parts = batch_for(ROWS, 0, "inline"), model_parts(model)
    with torch.no_grad():
        plain = last_hidden(parts, batch["lm_input_ids"], batch["lm_attention_mask"], batch["lm_position_ids"])
    rows = batch["jepa_valid"].nonzero().flatten()
    s1_end = torch.tensor([r["step1_span"][1] for r in ROWS if r["jepa_valid"]])
    torch.testing.assert_close(views(model, ROWS, 0, "packed")[0], plain[rows, s1_end], atol=1e-5, rtol=1e-5)


def test_sdpa_and_eager_agree_and_bf16_eager_stays_finite() -> None:
    sdpa, eager = tiny_llama("sdpa"), tiny_llama("eager")
    for layout in LAYOUTS:
        a, b = views(sdpa, ROWS, 2, layout), views(eager, ROWS, 2, layout)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    low = tiny_llama("eager", torch.bfloat16)
    assert model_parts(low).dtype == torch.bfloat16
    for layout in LAYOUTS:
        out = step_jepa_forward(low, batch_for(ROWS, 2, layout), layout=layout)
        assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_lora_forward_backward_trains_predictor_rows(impl: str) -> None:
    peft = pytest.importorskip("peft")
    base = tiny_llama(impl).train()
    plain = step_jepa_forward(base, batch_for(ROWS, 2, "inline"), layout="inline")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], trainable_token_indices=PRED[:2], task_type="CAUSAL_LM"
    )
    lora = peft.get_peft_model(base, config)
    for layout in LAYOUTS:
        lora.zero_grad()
        out = step_jepa_forward(lora, batch_for(ROWS, 2, layout), layout=layout, lam=1.0)
        if layout == "inline":  # fresh adapters (B = 0) and rows equal to the base: same loss
            torch.testing.assert_close(out.loss, plain.loss, atol=1e-5, rtol=1e-5)
        out.loss.backward()
        grads = {n: p.grad for n, p in lora.named_parameters() if p.requires_grad}
        rows = [g for n, g in grads.items() if "trainable_tokens_delta" in n and "embed_tokens" in n]
        assert rows and all(g is not None and (g.abs().sum(-1) > 0).all() for g in rows), layout
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)


def test_bad_values_name_the_parameter(model) -> None:
    batch = batch_for(ROWS, 1, "inline")
    with pytest.raises(ValueError, match="loss kind"):
        step_jepa_forward(model, batch, layout="inline", loss_kind="cos")
    with pytest.raises(ValueError, match="layout"):
        step_jepa_forward(model, batch, layout="packd")
