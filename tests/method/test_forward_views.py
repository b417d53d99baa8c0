"""The user/assistant pair and the stop-gradient target through a real tiny Llama.

For `views="user_assistant"` the LM loss must be the plain SFT loss of the batch, and the
views must equal separate forwards: the user turn followed by the K predictors (view 1)
and the assistant turn encoded alone (view 2). With `target_grad=False` the JEPA loss
must reach view 1's path and not view 2's.
"""

from __future__ import annotations

import pytest
import torch

from stepjepa.method.collate import shift_targets
from stepjepa.method.forward import (
    _two_pass_views,
    gather_views,
    last_hidden,
    lm_loss_from_hidden,
    model_parts,
    step_jepa_forward,
)
from stepjepa.method.losses import jepa_loss
from stepjepa.vocabulary import PAIR_COLUMNS
from tests.support.tiny_llama import PRED, ROWS, UA_ROWS, batch_for, sft_loss, tiny_llama, views

LAYOUTS = ("two_pass", "packed")

# `model` (sdpa and eager) is a fixture in conftest.py.


def ua_batch(rows: list[dict], k: int, layout: str) -> dict:
    return batch_for(rows, k, layout, "user_assistant")


def ua_views(model, rows: list[dict], k: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    return views(model, rows, k, layout, "user_assistant")


@torch.no_grad()
def alone(model, ids: list[int]) -> torch.Tensor:
    """Last hidden state of the last token of `ids` encoded on its own (plain causal, from 0)."""
    return model.model(input_ids=torch.tensor([ids]), use_cache=False).last_hidden_state[0, -1]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", range(5))
def test_views_are_separate_forwards_and_lm_is_sft(model, layout: str, k: int) -> None:
    v1, v2 = ua_views(model, UA_ROWS, k, layout)
    valid = [r for r in UA_ROWS if r["ua_valid"]]
    assert v1.shape == (len(valid), 64)
    for i, r in enumerate(valid):
        u_end, (a0, a_end) = r["user_span"][1], r["assistant_span"]
        want1 = alone(model, r["input_ids"][: u_end + 1] + PRED[:k])
        want2 = alone(model, r["input_ids"][a0 : a_end + 1])  # positions from 0: RoPE is relative
        torch.testing.assert_close(v1[i], want1, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(v2[i], want2, atol=2e-5, rtol=1e-4)
    out = step_jepa_forward(model, ua_batch(UA_ROWS, k, layout), layout=layout, gamma=0.7, lam=0.3)
    assert out.n_valid == len(valid)
    torch.testing.assert_close(out.lm_loss, sft_loss(model, UA_ROWS), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.jepa_loss, jepa_loss(v1, v2), atol=2e-5, rtol=1e-4)


def test_layouts_agree_and_differ_from_the_steps_pair(model) -> None:
    a, b = ua_views(model, UA_ROWS, 2, "two_pass"), ua_views(model, UA_ROWS, 2, "packed")
    torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    steps = batch_for(UA_ROWS, 2, "packed")
    assert steps["jepa_valid"].tolist() != ua_batch(UA_ROWS, 2, "packed")["jepa_valid"].tolist()


def embedding_grads(model, batch: dict, layout: str, target_grad: bool) -> torch.Tensor:
    """d(JEPA loss)/d(input embeddings) `(B, T, H)` of one packed pass (gamma = 0)."""
    captured = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        captured.append(out)

    hook = model.get_input_embeddings().register_forward_hook(keep)
    try:
        model.zero_grad()
        step_jepa_forward(model, batch, layout=layout, gamma=0.0, lam=1.0, target_grad=target_grad).loss.backward()
    finally:
        hook.remove()
    (embeds,) = captured
    return embeds.grad


@pytest.mark.parametrize("pair", ["steps", "user_assistant"])
def test_stop_gradient_reaches_view1_path_only(pair: str) -> None:
    """Packed rows: [plain | predictors | isolated copy]. The copy feeds view 2 alone, the
    predictors view 1 alone; with target_grad=False the copy gets no JEPA gradient."""
    model, k = tiny_llama("sdpa").train(), 2
    rows = UA_ROWS if pair == "user_assistant" else ROWS
    batch = batch_for(rows, k, "packed", pair)
    with_grad, stopped = (embedding_grads(model, batch, "packed", flag) for flag in (True, False))
    first, second, _ = PAIR_COLUMNS[pair]
    for b in batch["jepa_valid"].nonzero().flatten().tolist():
        n = len(rows[b]["input_ids"])
        copy = slice(n + k, int(batch["lengths"][b]))
        assert rows[b][second][1] - rows[b][first][1] == copy.stop - copy.start
        assert with_grad[b, copy].abs().sum() > 0 and stopped[b, copy].abs().sum() == 0, "view 2's path"
        for grads in (with_grad, stopped):  # view 1's path: predictors and the context before them
            assert grads[b, n : n + k].abs().sum() > 0 and grads[b, : rows[b][first][1] + 1].abs().sum() > 0
        torch.testing.assert_close(stopped[b, : n + k], with_grad[b, : n + k])


@pytest.mark.parametrize("layout", ["inline", "two_pass", "packed"])
def test_stop_gradient_equals_a_detached_target_and_changes_the_update(layout: str) -> None:
    model = tiny_llama("sdpa").train()
    batch = batch_for(ROWS, 2, layout)

    def grads(**kwargs) -> dict[str, torch.Tensor]:
        model.zero_grad()
        step_jepa_forward(model, batch, layout=layout, gamma=0.5, lam=1.0, **kwargs).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    stopped, default = grads(target_grad=False), grads()
    assert default.keys() == grads(target_grad=True).keys()
    assert any(not torch.allclose(stopped[n], default[n]) for n in default), "the option changes the gradient"
    # Reference: the same loss written out by hand, view 2 detached.
    model.zero_grad()
    parts, valid = model_parts(model), batch["jepa_valid"].nonzero().flatten()
    if layout == "two_pass":
        plain = last_hidden(parts, batch["lm_input_ids"], batch["lm_attention_mask"], batch["lm_position_ids"])
        lm = lm_loss_from_hidden(parts, plain, shift_targets(batch["lm_labels"]))
        v1, v2 = _two_pass_views(parts, batch, valid)
    else:
        hidden = last_hidden(parts, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        lm = lm_loss_from_hidden(parts, hidden, batch["shift_labels"])
        v1, v2 = gather_views(hidden, batch, valid)
    (0.5 * lm + jepa_loss(v1, v2.detach())).backward()
    for name, grad in stopped.items():
        torch.testing.assert_close(grad, model.get_parameter(name).grad, atol=1e-6, rtol=1e-5)
