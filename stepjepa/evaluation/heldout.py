"""Held-out evaluation of a model on tokenised rows, without generation.

Accuracy of a small or briefly trained model is often 0 for every config, which says
nothing. The token-level NLL of the reference answers is cheap and moves with every
change, and the NLL of the Step-2 tokens given Step 1 (a plain causal pass: no
predictors, no isolation) is what Step-JEPA is meant to improve. `view_embeddings`
returns the JEPA views the way training computes them, for `stepjepa.method.diagnostics`.

Both functions run batched, rows of similar length together, with right padding; results
come back in row order, and padding never changes a row's numbers (tested against batch
size 1), only their last bits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from stepjepa.method.collate import Collator, attention_for, shift_targets
from stepjepa.method.forward import (
    ModelParts,
    _two_pass_views,
    gather_views,
    last_hidden,
    lm_loss_from_hidden,
    model_parts,
)
from stepjepa.vocabulary import IGNORE_INDEX, PAIR_COLUMNS


@contextlib.contextmanager
def _inference(model: nn.Module) -> Iterator[ModelParts]:
    """No gradients and eval mode (no dropout) inside; the model's previous mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model_parts(model)
    finally:
        model.train(was_training)


def _batches(
    rows: Sequence[dict[str, Any]], batch_size: int, device: torch.device, collator: Collator
) -> Iterator[tuple[list[int], dict[str, Tensor]]]:
    """(row indices, collated batch on `device`); rows of similar length share a batch
    (GSM8K answers vary 3x in length, so this saves most of the padding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = collator([rows[i] for i in indices])
        yield indices, {key: value.to(device) for key, value in batch.items()}


def _step2_targets(targets: Tensor, chunk: Sequence[dict[str, Any]]) -> Tensor:
    """`(B, N)` shifted targets kept only where the predicted token lies in Step 2.

    Position p predicts token p + 1, so Step 2's tokens [a2, e2] are predicted at
    positions a2 - 1 .. e2 - 1 (Step 1's last token predicts Step 2's first).
    """
    spans = [r["step2_span"] if r["jepa_valid"] else (0, -1) for r in chunk]  # (0, -1): no position
    first = torch.tensor([int(s[0]) - 1 for s in spans], device=targets.device).unsqueeze(1)
    last = torch.tensor([int(s[1]) - 1 for s in spans], device=targets.device).unsqueeze(1)
    pos = torch.arange(targets.shape[1], device=targets.device).unsqueeze(0)
    return torch.where((pos >= first) & (pos <= last), targets, IGNORE_INDEX)


def _mean_nll(parts: ModelParts, hidden: Tensor, targets: Tensor) -> tuple[float, int]:
    """Mean NLL and count of one row's targets: `(1, N, H)`, `(1, N)`; nan for no target."""
    count = int((targets != IGNORE_INDEX).sum())
    return (float(lm_loss_from_hidden(parts, hidden, targets)) if count else math.nan), count


def heldout_nll(model: nn.Module, rows: list[dict], *, pad_id: int, batch_size: int = 16) -> list[dict]:
    """Per-row NLL of the labelled (assistant) tokens in a plain causal pass.

    One dict per row, in row order: {"nll": float, "tokens": int, "step2_nll": float | None,
    "step2_tokens": int}. `nll` is the mean over the row's labelled tokens (nan when it has
    none, e.g. an answer cut off entirely by truncation); `step2_nll` the mean over the
    Step-2 tokens, each given the question and Step 1 (None when the row has no valid pair).
    """
    device = next(model.parameters()).device
    results: list[dict] = [{}] * len(rows)
    with _inference(model) as parts:
        plain = Collator(
            k=0, layout="inline", predictor_ids=(), pad_id=pad_id, attention=attention_for(parts.attn_implementation)
        )
        for indices, batch in _batches(rows, batch_size, device, plain):
            hidden = last_hidden(parts, batch["lm_input_ids"], batch["lm_attention_mask"], batch["lm_position_ids"])
            targets = shift_targets(batch["lm_labels"])
            step2 = _step2_targets(targets, [rows[i] for i in indices])
            # Row by row through the LM head: logits of one row, not of the batch, are in memory at once.
            for b, i in enumerate(indices):
                nll, tokens = _mean_nll(parts, hidden[b : b + 1], targets[b : b + 1])
                step2_nll, step2_tokens = _mean_nll(parts, hidden[b : b + 1], step2[b : b + 1])
                results[i] = {
                    "nll": nll,
                    "tokens": tokens,
                    "step2_tokens": step2_tokens,
                    "step2_nll": step2_nll if rows[i]["jepa_valid"] else None,
                }
    return results


def view_embeddings(
    model: nn.Module,
    rows: list[dict],
    *,
    k: int,
    layout: str,
    predictor_ids: list[int],
    pad_id: int,
    batch_size: int = 16,
    views: str = "steps",
) -> tuple[Tensor, Tensor]:
    """`(V, H)` float32 view 1 and view 2 (on the CPU) of the V rows with a valid pair.

    View 1 is the last predictor's last-layer state (Step 1's last token when k == 0),
    view 2 Step 2's last token; computed by `collate` and the layout's training forward
    (`stepjepa.method.forward`), so they are the states the JEPA loss of that config compares.
    """
    valid = [r for r in rows if r[PAIR_COLUMNS[views][2]]]
    device = next(model.parameters()).device
    views1, views2, order = [], [], []
    with _inference(model) as parts:
        collator = Collator(
            k=k,
            layout=layout,
            predictor_ids=predictor_ids,
            pad_id=pad_id,
            views=views,
            attention=attention_for(parts.attn_implementation),
        )
        for indices, batch in _batches(valid, batch_size, device, collator):
            order += indices
            every = torch.arange(len(batch["jepa_valid"]), device=device)
            if layout == "two_pass":
                view1, view2 = _two_pass_views(parts, batch, every)
            else:
                hidden = last_hidden(parts, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
                view1, view2 = gather_views(hidden, batch, every)
            views1.append(view1.float().cpu())
            views2.append(view2.float().cpu())
    if not views1:
        empty = torch.zeros((0, parts.head.weight.shape[1]))
        return empty, empty.clone()
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))  # batches ran shortest first; rows come back in order
    return torch.cat(views1)[back], torch.cat(views2)[back]
