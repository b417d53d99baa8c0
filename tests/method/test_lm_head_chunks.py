"""The LM loss scored in chunks of labelled positions (stepjepa/method/forward.py, `lm_loss_sum`)
gives the loss and gradients of the whole-batch head, for any chunk size: hidden states,
head weight (tied to the embedding or not), Gemma-style soft-capping, LoRA, no target."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaForCausalLM

from stepjepa.method.forward import lm_loss_from_hidden, lm_loss_sum, model_parts, step_jepa_forward
from stepjepa.vocabulary import IGNORE_INDEX
from tests.support.tiny_llama import ROWS, batch_for, tiny_llama

MODEL = tiny_llama("sdpa")


def tied_llama() -> LlamaForCausalLM:
    model = tiny_llama("sdpa", tied=True, seed=1)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    return model


def hidden_and_targets(seed: int, batch: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random `(B, T, 64)` states and `(B, T)` targets, about a third of them -100."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, width, 64, generator=g)
    targets = torch.randint(0, 300, (batch, width), generator=g)
    return hidden, torch.where(torch.rand(batch, width, generator=g) < 0.35, IGNORE_INDEX, targets)


def loss_and_grads(parts, hidden: torch.Tensor, targets: torch.Tensor, chunk: int | None):
    """Mean LM loss and its gradients for the hidden states and the head weight."""
    leaf = hidden.clone().requires_grad_(True)
    parts.head.weight.grad = None
    loss = lm_loss_from_hidden(parts, leaf, targets, chunk)
    loss.backward()
    return loss.detach(), leaf.grad, parts.head.weight.grad.clone()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 4),
    width=st.integers(1, 40),
    chunk=st.integers(1, 200),
    softcap=st.sampled_from([None, 5.0, 30.0]),
)
def test_chunked_loss_and_grads_equal_the_whole_batch_head(seed, batch, width, chunk, softcap):
    parts = dataclasses.replace(model_parts(MODEL), softcap=softcap)
    hidden, targets = hidden_and_targets(seed, batch, width)
    if not (targets != IGNORE_INDEX).any():
        targets[0, 0] = 7
    want = loss_and_grads(parts, hidden, targets, None)
    got = loss_and_grads(parts, hidden, targets, chunk)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    total, count = lm_loss_sum(parts, hidden, targets, chunk)
    assert count == int((targets != IGNORE_INDEX).sum())
    torch.testing.assert_close(total / count, want[0], atol=1e-6, rtol=0)


def test_softcap_changes_the_loss():
    """The soft-capped path is really taken (else the property above would not test it)."""
    hidden, targets = hidden_and_targets(0, 2, 30)
    parts = model_parts(MODEL)
    with torch.no_grad():
        capped = lm_loss_from_hidden(dataclasses.replace(parts, softcap=0.5), hidden * 10, targets, 4)
        assert abs(float(capped) - float(lm_loss_from_hidden(parts, hidden * 10, targets, 4))) > 1e-2


@pytest.mark.parametrize("build", [tied_llama, lambda: tiny_llama("eager")], ids=["tied", "untied"])
@pytest.mark.parametrize("layout", ["inline", "packed", "two_pass"])
def test_chunked_training_step_has_the_gradients_of_the_whole_batch_head(build, layout):
    model = build()
    batch = batch_for(ROWS, 2, layout)
    grads = {}
    for chunk in (None, 3):
        model.zero_grad()
        out = step_jepa_forward(model, batch, layout=layout, lam=0.5, lm_chunk=chunk)
        out.loss.backward()
        grads[chunk] = (out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(grads[3][0], grads[None][0], atol=1e-6, rtol=0)
    assert grads[None][1].keys() == grads[3][1].keys()
    for name, grad in grads[None][1].items():
        torch.testing.assert_close(grads[3][1][name], grad, atol=1e-6, rtol=0, msg=name)


def test_chunks_under_lora_and_without_grad():
    """A LoRA-wrapped head is not a plain Linear: its chunks are checkpointed instead."""
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(
        tiny_llama("sdpa"), LoraConfig(r=4, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False)
    )
    parts = model_parts(lora)
    assert type(parts.head) is not torch.nn.Linear
    hidden, targets = hidden_and_targets(3, 3, 30)
    results = []
    for chunk in (None, 7):
        lora.zero_grad()
        leaf = hidden.clone().requires_grad_(True)
        loss = lm_loss_from_hidden(parts, leaf, targets, chunk)
        loss.backward()
        results.append(
            (
                loss.detach(),
                leaf.grad,
                {n: p.grad.clone() for n, p in lora.named_parameters() if p.requires_grad and "lm_head" in n},
            )
        )
    (want, want_hidden, want_head), (got, got_hidden, got_head) = results
    assert len(want_head) == 2  # lora_A, lora_B of the head
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got_hidden, want_hidden, atol=1e-6, rtol=0)
    for name, grad in want_head.items():
        torch.testing.assert_close(got_head[name], grad, atol=1e-6, rtol=0, msg=name)
    with torch.no_grad():
        for p in (parts, model_parts(MODEL)):
            torch.testing.assert_close(
                lm_loss_from_hidden(p, hidden, targets, 7),
                lm_loss_from_hidden(p, hidden, targets, None),
                atol=1e-6,
                rtol=0,
            )


def test_no_target_gives_a_zero_that_carries_the_graph():
    hidden = torch.randn(2, 5, 64, requires_grad=True)
    total, count = lm_loss_sum(model_parts(MODEL), hidden, torch.full((2, 5), IGNORE_INDEX), 2)
    assert count == 0 and total.item() == 0.0 and total.requires_grad
    total.backward()
    assert hidden.grad is not None and not hidden.grad.any()
    with pytest.raises(ValueError, match="chunk"):
        lm_loss_sum(model_parts(MODEL), hidden, torch.zeros((2, 5), dtype=torch.long), 0)


def test_chunks_under_bf16_autocast_track_the_whole_batch_head():
    """Under autocast the head's matmuls run in bf16 in both paths: close, not equal."""
    hidden, targets = hidden_and_targets(5, 4, 40)
    results = []
    for chunk in (None, 16):
        leaf = hidden.clone().requires_grad_(True)
        MODEL.lm_head.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss_from_hidden(model_parts(MODEL), leaf, targets, chunk)
        loss.backward()
        assert loss.dtype == torch.float32
        results.append((loss.detach(), leaf.grad, MODEL.lm_head.weight.grad.clone()))
    for got, want in zip(results[1], results[0]):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-2)


def test_a_frozen_head_gets_no_gradient_and_the_states_still_do():
    """LoRA fine-tuning freezes the head: no (V, H) weight gradient is computed or returned."""
    model = tiny_llama("sdpa")
    model.lm_head.weight.requires_grad_(False)
    hidden, targets = hidden_and_targets(9, 2, 30)
    grads = []
    for chunk in (None, 5):
        leaf = hidden.clone().requires_grad_(True)
        lm_loss_from_hidden(model_parts(model), leaf, targets, chunk).backward()
        grads.append(leaf.grad)
    assert model.lm_head.weight.grad is None
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)
