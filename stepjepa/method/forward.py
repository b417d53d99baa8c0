"""What one Step-JEPA training step computes: `loss = gamma * LM + lambda * JEPA`.

`step_jepa_forward` runs the decoder (the base model without its LM head) on a batch
from `stepjepa.method.collate.collate`, reads the views from its last hidden state and applies
the LM head itself, only at positions that carry a target. That keeps memory at one
`(B, T, H)` state plus `(targets, V)` logits instead of every layer's states
(`output_hidden_states=True`) or logits for prompt and padding positions; and the head
scores those positions `lm_chunk` at a time (`lm_loss_sum`), so float32 `(targets, V)`
logits are never held for the whole batch.

Passes per layout (docs/step-jepa.md 5): inline and packed one, two_pass two (a plain
LM pass and an inline JEPA pass over the valid rows only). A batch without JEPA
(`apply_jepa=False`, lambda = 0, or no valid pair) is one plain causal pass over the
`lm_*` keys: exactly supervised fine-tuning. Whether a batch applies JEPA (jepa_ratio)
is the training loop's draw.

The losses come back as sums and counts too (`StepOutput`): the training loop divides
by the counts of a whole optimizer step (docs/loss-normalisation.md); a lone call
divides by its own batch's counts, i.e. returns the batch's means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stepjepa.method.collate import shift_targets
from stepjepa.method.flex_masks import block_mask, select_rows
from stepjepa.method.losses import check_loss_kind, jepa_loss, mean_cosine
from stepjepa.method.masks import check_layout, to_model_mask
from stepjepa.vocabulary import IGNORE_INDEX, Layout, LossKind

# Labelled positions per LM-head chunk when the caller does not say (train.lm_loss_chunk).
LM_CHUNK = 128


@dataclass(frozen=True)
class StepOutput:
    """One batch's losses; tensors are scalars `()`, all but `loss` detached.

    With the default normalisers `loss = gamma * lm_loss + lam * jepa_loss`; with a
    step's totals (`lm_tokens`, `jepa_pairs`) it is this batch's share of the step's loss.
    """

    loss: Tensor
    """gamma * lm_sum / lm_tokens + lam * jepa_sum / jepa_pairs, the tensor to back-propagate."""
    lm_loss: Tensor
    """Mean cross-entropy over this batch's target tokens (float32)."""
    jepa_loss: Tensor
    """Mean JEPA loss over this batch's valid pairs; 0 when JEPA was not applied or no pair is valid."""
    mean_cos: Tensor | None
    """Mean cos(view1, view2) over valid pairs; None when no view was computed."""
    n_valid: int
    """Number of pairs that entered the JEPA loss."""
    lm_sum: Tensor
    """Summed cross-entropy over this batch's target tokens (float32)."""
    n_tokens: int
    """Number of target tokens (labels that are not -100 after the shift)."""
    jepa_sum: Tensor
    """Summed per-pair JEPA loss (`jepa_loss * n_valid`; for infonce each pair's term uses
    this batch's other pairs as negatives)."""


@dataclass(frozen=True)
class ModelParts:
    """What a step needs from the model: decoder, LM head, and how to build its mask."""

    decoder: nn.Module
    head: nn.Module
    attn_implementation: str
    dtype: torch.dtype
    softcap: float | None


def model_parts(model: nn.Module) -> ModelParts:
    """Find decoder, LM head, attention implementation and dtype of a causal LM, also
    when PEFT-wrapped (`get_base_model`). DDP is refused: calling its inner modules
    would bypass the gradient synchronisation that its own forward sets up."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        raise TypeError("step_jepa_forward cannot drive a DistributedDataParallel wrapper; pass the unwrapped model")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if head is None:
        raise TypeError(f"{type(base).__name__} has no LM head: step_jepa_forward needs a causal LM")
    config = base.config
    return ModelParts(
        decoder=base.get_decoder(),
        head=head,
        attn_implementation=config._attn_implementation or "eager",
        dtype=base.dtype,
        softcap=getattr(config, "final_logit_softcapping", None),
    )


def last_hidden(parts: ModelParts, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
    """Decoder's last hidden state (after the final norm): `(B, T)` ids, `(B, 1, T, T)`
    bool mask (or, for `flex_attention`, the `(B, 7)` span table of stepjepa.method.flex_masks),
    `(B, T)` positions -> `(B, T, H)`."""
    if parts.attn_implementation == "flex_attention":
        mask = block_mask(attention_mask, input_ids.shape[1])
    else:
        mask = to_model_mask(attention_mask, parts.attn_implementation, parts.dtype)
    out = parts.decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def _head_loss_sum(head: nn.Module, states: Tensor, targets: Tensor, softcap: float | None) -> Tensor:
    """Summed cross-entropy of the LM head: `(N, H)` states, `(N,)` targets -> `()` float32."""
    logits = head(states).float()
    if softcap:  # Gemma-2 style logit soft-capping lives in the CausalLM forward we bypass
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, targets, reduction="sum")


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a linear head `(N, H) -> (N, V)`, `chunk` rows at a time, with
    the gradients computed in the forward pass (Liger's fused linear cross-entropy): the
    float32 logits of one chunk exist at a time, and the backward pass only scales the
    stored gradients of states, weight and bias by the incoming gradient. Matmuls run in
    the autocast dtype when autocast is on, the softmax and the weight-gradient sum in float32.
    """

    @staticmethod
    def forward(
        ctx, states: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int, softcap: float | None
    ) -> Tensor:
        want_states, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_states = torch.empty_like(states) if want_states else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_bias else None
        # float64: the sum of many chunk sums keeps the unchunked sum's precision
        total = torch.zeros((), dtype=torch.float64, device=states.device)
        cast = None  # the weight in the logits' dtype (autocast's), cast once
        for start in range(0, len(states), chunk):
            part, wanted = states[start : start + chunk], targets[start : start + chunk]
            logits = F.linear(part, weight, bias)
            dtype = logits.dtype
            y = logits.float()
            del logits
            capped = None
            if softcap:
                capped = torch.tanh(y / softcap)
                y = capped * softcap
            # cross_entropy's own arithmetic (nll of log_softmax), so the loss is the unchunked one's
            logp = F.log_softmax(y, dim=-1)
            del y
            total += F.nll_loss(logp, wanted, reduction="sum")
            grad = logp.exp_()  # softmax, in place of the log-probabilities
            grad[torch.arange(len(wanted), device=grad.device), wanted] -= 1.0
            if capped is not None:  # d(c * tanh(z / c)) / dz = 1 - tanh^2
                grad.mul_(1.0 - capped.square_())
            grad, part = grad.to(dtype), part.to(dtype)
            if want_states:
                cast = weight.to(dtype) if cast is None else cast
                grad_states[start : start + chunk] = grad @ cast
            if want_weight and dtype == torch.float32:  # in place: no (V, H) temporary per chunk
                grad_weight.addmm_(grad.T, part)
            elif want_weight:  # a (V, H) product in the autocast dtype, summed in float32
                grad_weight.add_(grad.T @ part)
            if want_bias:
                grad_bias.add_(grad.float().sum(0))
            del grad, logp, capped  # before the next chunk's logits, or two chunks' are alive
        ctx.save_for_backward(*(g for g in (grad_states, grad_weight, grad_bias) if g is not None))
        ctx.wanted, ctx.weight_dtype = (want_states, want_weight, want_bias), weight.dtype
        return total.float()

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        # Scaled in place, hence once only: no second (V, H) buffer.
        if getattr(ctx, "done", False):
            raise RuntimeError("the chunked LM loss cannot be back-propagated twice (retain_graph)")
        ctx.done = True
        stored = iter(ctx.saved_tensors)
        want_states, want_weight, want_bias = ctx.wanted
        grad_states = next(stored).mul_(grad_out) if want_states else None
        grad_weight = next(stored).mul_(grad_out).to(ctx.weight_dtype) if want_weight else None
        grad_bias = next(stored).mul_(grad_out).to(ctx.weight_dtype) if want_bias else None
        return grad_states, grad_weight, grad_bias, None, None, None


def lm_loss_sum(parts: ModelParts, hidden: Tensor, targets: Tensor, chunk: int | None = LM_CHUNK) -> tuple[Tensor, int]:
    """Summed cross-entropy of the LM head at positions whose target is not -100, and their count.

    `hidden (B, T, H)`, `targets (B, T)` already shifted (targets[t] is what position t
    predicts). No target at all gives a zero that still carries the graph, and count 0.

    The head scores at most `chunk` labelled positions at a time (None: all at once), so
    float32 `(chunk, V)` logits, not `(positions, V)`, are in memory. A plain `nn.Linear`
    head (tied or not) goes through `_LinearCrossEntropy`, which computes each chunk's
    gradients in the forward pass and keeps only them (Liger's and TRL's chunked loss); any
    other head module (a LoRA-wrapped head) is checkpointed chunk by chunk
    (`torch.utils.checkpoint`): each chunk's logits are recomputed in the backward pass, at
    the cost of one more head matmul. Loss and gradients equal the unchunked ones up to
    summation order (tests/method/test_lm_head_chunks.py).
    """
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 or None; got {chunk}")
    keep = targets != IGNORE_INDEX
    count = int(keep.sum())
    if count == 0:
        return hidden.sum() * 0.0, 0
    states, wanted = hidden[keep], targets[keep]
    head = parts.head
    if chunk is None or count <= chunk:
        return _head_loss_sum(head, states, wanted, parts.softcap), count
    if type(head) is nn.Linear and torch.is_grad_enabled():
        return _LinearCrossEntropy.apply(states, head.weight, head.bias, wanted, chunk, parts.softcap), count
    recompute = torch.is_grad_enabled()  # without a graph there is nothing to recompute
    total = None
    for start in range(0, count, chunk):
        args = (head, states[start : start + chunk], wanted[start : start + chunk], parts.softcap)
        piece = (
            checkpoint(_head_loss_sum, *args, use_reentrant=False, preserve_rng_state=False)
            if recompute
            else _head_loss_sum(*args)
        )
        total = piece.double() if total is None else total + piece.double()
    return total.float(), count


def lm_loss_from_hidden(parts: ModelParts, hidden: Tensor, targets: Tensor, chunk: int | None = LM_CHUNK) -> Tensor:
    """Mean cross-entropy of the LM head at positions whose target is not -100 (`lm_loss_sum`
    divided by its count; no target gives a zero that still carries the graph)."""
    total, count = lm_loss_sum(parts, hidden, targets, chunk)
    return total / max(count, 1)


def gather_views(hidden: Tensor, batch: dict[str, Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
    """`(B, T, H)` states -> `(V, H)` view 1 and view 2 of the valid `rows` `(V,)`."""
    return hidden[rows, batch["view1_index"][rows]], hidden[rows, batch["view2_index"][rows]]


def _plain_pass(parts: ModelParts, batch: dict[str, Tensor], chunk: int | None) -> tuple[Tensor, int]:
    hidden = last_hidden(parts, batch["lm_input_ids"], batch["lm_attention_mask"], batch["lm_position_ids"])
    return lm_loss_sum(parts, hidden, shift_targets(batch["lm_labels"]), chunk)


def _two_pass_views(parts: ModelParts, batch: dict[str, Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
    """two_pass's JEPA pass: the inline rows of the valid examples only, trimmed to the
    longest of them (invalid rows would be plain rows whose states nobody reads)."""
    width = int(batch["lengths"][rows].max())
    hidden = last_hidden(
        parts,
        batch["input_ids"][rows, :width],
        select_rows(batch["attention_mask"], rows, width),
        batch["position_ids"][rows, :width],
    )
    local = torch.arange(len(rows), device=rows.device)
    return hidden[local, batch["view1_index"][rows]], hidden[local, batch["view2_index"][rows]]


def step_jepa_forward(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    layout: Layout,
    loss_kind: LossKind = "cosine",
    gamma: float = 1.0,
    lam: float = 1.0,
    temperature: float = 0.07,
    apply_jepa: bool = True,
    target_grad: bool = True,
    lm_tokens: float | None = None,
    jepa_pairs: float | None = None,
    lm_chunk: int | None = LM_CHUNK,
) -> StepOutput:
    """One training step's loss for a `collate` batch (tensors on the model's device).

    `loss = gamma * LM + lam * JEPA(view1, view2)` over the `jepa_valid` rows, `loss_kind`
    and `temperature` as in `stepjepa.method.losses.jepa_loss`. Without JEPA (`apply_jepa`
    False, `lam` 0 or no valid row) it is `gamma * LM` of one plain causal pass, so
    K = 0 with lambda = 0 is exactly supervised fine-tuning in every layout. With
    `target_grad` False view 2 is detached: the JEPA loss trains only view 1's path (the
    LM loss still trains everything), so the target cannot move towards the predictor.

    LM is the summed token cross-entropy divided by `lm_tokens`, JEPA the summed per-pair
    loss divided by `jepa_pairs`; by default this batch's own counts (its means). The
    training loop passes its optimizer step's totals, so the micro-batches' losses add
    up to the step's token- and pair-weighted means. `lm_chunk`: see `lm_loss_sum`.
    """
    check_layout(layout)
    check_loss_kind(loss_kind)
    parts = model_parts(model)
    rows = batch["jepa_valid"].nonzero().flatten()
    if not apply_jepa or lam == 0 or len(rows) == 0:
        lm_sum, n_tokens = _plain_pass(parts, batch, lm_chunk)
        zero = torch.zeros((), device=lm_sum.device)
        return StepOutput(
            loss=gamma * (lm_sum / (lm_tokens or max(n_tokens, 1))),
            lm_loss=lm_sum.detach() / max(n_tokens, 1),
            jepa_loss=zero,
            mean_cos=None,
            n_valid=0,
            lm_sum=lm_sum.detach(),
            n_tokens=n_tokens,
            jepa_sum=zero,
        )
    if layout == "two_pass":
        lm_sum, n_tokens = _plain_pass(parts, batch, lm_chunk)
        view1, view2 = _two_pass_views(parts, batch, rows)
    else:
        hidden = last_hidden(parts, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        lm_sum, n_tokens = lm_loss_sum(parts, hidden, batch["shift_labels"], lm_chunk)
        view1, view2 = gather_views(hidden, batch, rows)
    if not target_grad:
        view2 = view2.detach()
    jepa = jepa_loss(view1, view2, loss_kind, temperature)
    # Every kind is a mean over pairs (mse: of each pair's mean over H), so n * mean is the
    # sum; scaling the mean by n / jepa_pairs keeps a lone batch's loss bit for bit its mean.
    jepa_sum = jepa * len(rows)
    share = len(rows) / (jepa_pairs or len(rows))
    loss = gamma * (lm_sum / (lm_tokens or max(n_tokens, 1))) + lam * (jepa * share)
    return StepOutput(
        loss=loss,
        lm_loss=lm_sum.detach() / max(n_tokens, 1),
        jepa_loss=jepa.detach(),
        mean_cos=mean_cosine(view1, view2).detach(),
        n_valid=len(rows),
        lm_sum=lm_sum.detach(),
        n_tokens=n_tokens,
        jepa_sum=jepa_sum.detach(),
    )
