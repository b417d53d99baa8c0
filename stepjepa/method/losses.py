"""JEPA losses between view 1 (predictor) and view 2 (Step 2) embeddings (docs/step-jepa.md 4).

Views are `(V, H)`: one row per example with a valid JEPA pair. Losses are computed in
float32 whatever the model dtype, since bf16 cosines of near-parallel vectors are noisy:
the views are upcast and autocast is switched off here, else infonce's similarity
matmul would run in bf16 again under `train.precision: bf16`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor

from stepjepa.vocabulary import LOSS_KINDS, LossKind


def check_loss_kind(kind: str) -> None:
    """Raise a ValueError naming the loss kind unless it is one of LOSS_KINDS."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"JEPA loss kind must be one of {', '.join(LOSS_KINDS)}; got {kind!r}")


def _check_views(view1: Tensor, view2: Tensor) -> None:
    if view1.ndim != 2 or view1.shape != view2.shape:
        raise ValueError(f"views must both be (V, H); got {tuple(view1.shape)} and {tuple(view2.shape)}")


def _float32(view: Tensor) -> contextlib.AbstractContextManager:
    """No autocast on the views' device: float32 inputs stay float32 through matmuls."""
    return torch.autocast(view.device.type, enabled=False)


def mean_cosine(view1: Tensor, view2: Tensor) -> Tensor:
    """Mean cosine similarity of paired rows: `(V, H), (V, H) -> ()` float32."""
    _check_views(view1, view2)
    with _float32(view1):
        return F.cosine_similarity(view1.float(), view2.float(), dim=-1).mean()


def infonce(view1: Tensor, view2: Tensor, temperature: float) -> Tensor:
    """Cross-entropy of `cos(v1_i, v2_j) / temperature` against the diagonal: `()` float32.

    Row i's positive is v2_i; the other rows of the batch are its negatives. With a
    single valid pair there are no negatives and the loss is 0.
    """
    _check_views(view1, view2)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for infonce; got {temperature}")
    with _float32(view1):
        a = F.normalize(view1.float(), dim=-1)
        b = F.normalize(view2.float(), dim=-1)
        logits = a @ b.T / temperature
        return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def jepa_loss(view1: Tensor, view2: Tensor, kind: LossKind = "cosine", temperature: float = 0.07) -> Tensor:
    """JEPA loss of paired views `(V, H), (V, H) -> ()` float32, V >= 1.

    cosine: 1 - mean cos(v1, v2); l2: mean ||v1 - v2||_2; mse: mean (v1 - v2)^2 over all
    elements; infonce: see `infonce` (`temperature` is used only there).
    """
    check_loss_kind(kind)
    _check_views(view1, view2)
    if len(view1) == 0:
        raise ValueError("jepa_loss needs at least one pair of views")
    if kind == "infonce":
        return infonce(view1, view2, temperature)
    a, b = view1.float(), view2.float()
    with _float32(view1):
        if kind == "cosine":
            return 1.0 - F.cosine_similarity(a, b, dim=-1).mean()
        if kind == "l2":
            return torch.linalg.vector_norm(a - b, dim=-1).mean()
        return F.mse_loss(a, b)
