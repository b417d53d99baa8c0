"""What one Step-JEPA training step computes: `loss = gamma * LM + lambda * JEPA`.

`step_jepa_forward` runs the decoder (the base model without its LM head) on a batch
from `stepjepa.collate.collate`, reads the views from its last hidden state and applies
the LM head itself, only at positions that carry a target. That keeps memory at one
`(B, T, H)` state plus `(targets, V)` logits instead of every layer's states
(`output_hidden_states=True`) or logits for prompt and padding positions.

Passes per layout (docs/step-jepa.md 5): inline and packed one, two_pass two (a plain
LM pass and an inline JEPA pass over the valid rows only). A batch without JEPA
(`apply_jepa=False`, lambda = 0, or no valid pair) is one plain causal pass over the
`lm_*` keys: exactly supervised fine-tuning. Whether a batch applies JEPA (jepa_ratio)
is the training loop's draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stepjepa.collate import shift_targets
from stepjepa.flex_masks import block_mask, select_rows
from stepjepa.losses import check_loss_kind, jepa_loss, mean_cosine
from stepjepa.masks import check_layout, to_model_mask
from stepjepa.vocabulary import IGNORE_INDEX, Layout, LossKind


@dataclass(frozen=True)
class StepOutput:
    """One step's losses; tensors are scalars `()`."""

    loss: Tensor
    """gamma * lm_loss + lam * jepa_loss, the tensor to back-propagate."""
    lm_loss: Tensor
    """Mean cross-entropy over target tokens (float32)."""
    jepa_loss: Tensor
    """JEPA loss over valid pairs; 0 when JEPA was not applied or no pair is valid."""
    mean_cos: Tensor | None
    """Detached mean cos(view1, view2) over valid pairs; None when no view was computed."""
    n_valid: int
    """Number of pairs that entered the JEPA loss."""


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
        decoder=base.get_decoder(), head=head,
        attn_implementation=config._attn_implementation or "eager",
        dtype=base.dtype, softcap=getattr(config, "final_logit_softcapping", None),
    )


def last_hidden(parts: ModelParts, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor) -> Tensor:
    """Decoder's last hidden state (after the final norm): `(B, T)` ids, `(B, 1, T, T)`
    bool mask (or, for `flex_attention`, the `(B, 7)` span table of stepjepa.flex_masks),
    `(B, T)` positions -> `(B, T, H)`."""
    if parts.attn_implementation == "flex_attention":
        mask = block_mask(attention_mask, input_ids.shape[1])
    else:
        mask = to_model_mask(attention_mask, parts.attn_implementation, parts.dtype)
    out = parts.decoder(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=False)
    return out.last_hidden_state


def lm_loss_from_hidden(parts: ModelParts, hidden: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of the LM head at positions whose target is not -100.

    `hidden (B, T, H)`, `targets (B, T)` already shifted (targets[t] is what position t
    predicts). No target at all gives a zero that still carries the graph.
    """
    keep = targets != IGNORE_INDEX
    if not bool(keep.any()):
        return hidden.sum() * 0.0
    logits = parts.head(hidden[keep]).float()
    if parts.softcap:  # Gemma-2 style logit soft-capping lives in the CausalLM forward we bypass
        logits = torch.tanh(logits / parts.softcap) * parts.softcap
    return F.cross_entropy(logits, targets[keep])


def gather_views(hidden: Tensor, batch: dict[str, Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
    """`(B, T, H)` states -> `(V, H)` view 1 and view 2 of the valid `rows` `(V,)`."""
    return hidden[rows, batch["view1_index"][rows]], hidden[rows, batch["view2_index"][rows]]


def _plain_pass(parts: ModelParts, batch: dict[str, Tensor]) -> Tensor:
    hidden = last_hidden(parts, batch["lm_input_ids"], batch["lm_attention_mask"], batch["lm_position_ids"])
    return lm_loss_from_hidden(parts, hidden, shift_targets(batch["lm_labels"]))


def _two_pass_views(parts: ModelParts, batch: dict[str, Tensor], rows: Tensor) -> tuple[Tensor, Tensor]:
    """two_pass's JEPA pass: the inline rows of the valid examples only, trimmed to the
    longest of them (invalid rows would be plain rows whose states nobody reads)."""
    width = int(batch["lengths"][rows].max())
    hidden = last_hidden(
        parts, batch["input_ids"][rows, :width],
        select_rows(batch["attention_mask"], rows, width), batch["position_ids"][rows, :width],
    )
    local = torch.arange(len(rows), device=rows.device)
    return hidden[local, batch["view1_index"][rows]], hidden[local, batch["view2_index"][rows]]


def step_jepa_forward(
    model: nn.Module, batch: dict[str, Tensor], *, layout: Layout, loss_kind: LossKind = "cosine",
    gamma: float = 1.0, lam: float = 1.0, temperature: float = 0.07, apply_jepa: bool = True,
    target_grad: bool = True,
) -> StepOutput:
    """One training step's loss for a `collate` batch (tensors on the model's device).

    `loss = gamma * LM + lam * JEPA(view1, view2)` over the `jepa_valid` rows, `loss_kind`
    and `temperature` as in `stepjepa.losses.jepa_loss`. Without JEPA (`apply_jepa`
    False, `lam` 0 or no valid row) it is `gamma * LM` of one plain causal pass, so
    K = 0 with lambda = 0 is exactly supervised fine-tuning in every layout. With
    `target_grad` False view 2 is detached: the JEPA loss trains only view 1's path (the
    LM loss still trains everything), so the target cannot move towards the predictor.
    """
    check_layout(layout)
    check_loss_kind(loss_kind)
    parts = model_parts(model)
    rows = batch["jepa_valid"].nonzero().flatten()
    if not apply_jepa or lam == 0 or len(rows) == 0:
        lm = _plain_pass(parts, batch)
        return StepOutput(gamma * lm, lm.detach(), torch.zeros((), device=lm.device), None, 0)
    if layout == "two_pass":
        lm = _plain_pass(parts, batch)
        view1, view2 = _two_pass_views(parts, batch, rows)
    else:
        hidden = last_hidden(parts, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        lm = lm_loss_from_hidden(parts, hidden, batch["shift_labels"])
        view1, view2 = gather_views(hidden, batch, rows)
    if not target_grad:
        view2 = view2.detach()
    jepa = jepa_loss(view1, view2, loss_kind, temperature)
    return StepOutput(
        loss=gamma * lm + lam * jepa, lm_loss=lm.detach(), jepa_loss=jepa.detach(),
        mean_cos=mean_cosine(view1, view2).detach(), n_valid=len(rows),
    )
