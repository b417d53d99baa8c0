"""Block-sparse attention for the Step-JEPA layouts: a FlexAttention `BlockMask` built from
a small per-row span table, never from a dense `(T, T)` mask.

Every layout mask of `stepjepa.method.masks` is one rule over a few per-row boundaries. A *span
table* `(B, 7)` long holds them, in laid-out row coordinates (position 0 = the row's
first real token), one row per example::

    OFFSET  first real position in the padded batch (0 right-padded, T - LENGTH left-padded)
    LENGTH  real laid-out tokens
    ISO_START, ISO_END    the isolated block (inline's Step 2, packed's Step-2 copy);
                          empty when ISO_START > ISO_END
    PRED_START, PRED_END  packed's predictors, which also reach back into the plain prefix
    REACH                 ... up to and including this key (s1_end); -1 reaches nothing

Query q may attend key kv (both batch positions; r = position - OFFSET) iff q is real and
`0 <= r(kv) <= r(q)` and `r(kv) >= lo` or `r(kv) <= hi`, with lo = ISO_START inside the
isolated block, PRED_START inside the predictors, else 0, and hi = REACH inside the
predictors, else -1; a padding query sees itself only. That is exactly `stepjepa.method.masks`'
`lo`/`hi` rule, so `dense_from_spans` equals `layout_mask` cell for cell (the tests prove
it) and a padding row sees itself, as in the dense masks.

FlexAttention skips the whole tiles (128 x 128 by default) the rule leaves empty, so on long
rows packed's copy and inline's isolated Step 2 cost little attention to keys they cannot
see. Flex is a GPU path for training: on CPU torch runs its forward but not its backward
(stack-notes.md).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

from stepjepa.method.masks import check_k, check_layout, inline_lengths, packed_lengths

OFFSET, LENGTH, ISO_START, ISO_END, PRED_START, PRED_END, REACH = range(7)
SPAN_COLUMNS = 7
PaddingSide = Literal["right", "left"]


def attention_spans(
    layout: str,
    lengths: Tensor,
    s1_end: Tensor,
    s2_end: Tensor,
    k: int,
    valid: Tensor,
    total_len: int,
    padding_side: PaddingSide = "right",
) -> Tensor:
    """The `(B, 7)` span table of `layout` (`causal`, `inline`, `two_pass`'s JEPA pass or
    `packed`) from the same `(B,)` lengths and spans `stepjepa.method.masks` takes.

    Example n = 5, s1_end = 1, s2_end = 3, K = 1, inline, right-padded: the isolated
    Step 2 is laid-out positions 3..4 and there are no packed predictors::

        [0, 6, 3, 4, 0, -1, -1]
    """
    check_k(k)
    if layout != "causal":
        check_layout(layout)
    valid = valid.bool()
    kk = k * valid.long()
    zero = torch.zeros_like(lengths)
    empty = (zero, zero - 1)
    if layout == "causal":
        length, iso, pred, reach = lengths, empty, empty, zero - 1
    elif layout == "packed":
        length = packed_lengths(lengths, s1_end, s2_end, k, valid)
        # Invalid rows: the copy and predictors are empty ranges at the row's end.
        iso = (lengths + kk, length - 1)
        pred = (lengths, lengths + kk - 1)
        reach = torch.where(valid & (kk > 0), s1_end, -1)
    else:
        length = inline_lengths(lengths, k, valid)
        iso = (torch.where(valid, s1_end + kk + 1, 0), torch.where(valid, s2_end + kk, -1))
        pred, reach = empty, zero - 1
    if int(length.max()) > total_len:
        raise ValueError(f"total_len={total_len} is shorter than the longest laid-out row ({int(length.max())})")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left'; got {padding_side!r}")
    offset = zero if padding_side == "right" else total_len - length
    return torch.stack([offset, length, *iso, *pred, reach], dim=1).long()


def allowed(spans: Tensor, b: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """Whether query q may attend key kv in row b (bool, broadcast over b, q, kv).

    Pure tensor arithmetic on one `spans[b]` row, so FlexAttention can vmap or compile it.
    """
    row = spans[b]
    offset = row[..., OFFSET]
    rq, rk = q - offset, kv - offset
    real = (rq >= 0) & (rq < row[..., LENGTH])
    in_iso = (rq >= row[..., ISO_START]) & (rq <= row[..., ISO_END])
    in_pred = (rq >= row[..., PRED_START]) & (rq <= row[..., PRED_END])
    lo = torch.where(in_iso, row[..., ISO_START], torch.where(in_pred, row[..., PRED_START], 0))
    hi = torch.where(in_pred, row[..., REACH], -1)
    seen = (rk >= 0) & (rk <= rq) & ((rk >= lo) | (rk <= hi))
    return torch.where(real, seen, q == kv)


def span_mask_mod(spans: Tensor):
    """FlexAttention `mask_mod(b, h, q_idx, kv_idx)` of a `(B, 7)` span table (heads share it)."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return allowed(spans, b, q_idx, kv_idx)

    return mask_mod


def dense_from_spans(spans: Tensor, total_len: int) -> Tensor:
    """`(B, 7)` spans -> the `(B, 1, T, T)` bool mask they describe (for sdpa/eager and tests)."""
    b = torch.arange(spans.shape[0], device=spans.device).view(-1, 1, 1)
    pos = torch.arange(total_len, device=spans.device)
    return allowed(spans, b, pos.view(1, -1, 1), pos.view(1, 1, -1)).unsqueeze(1)


def block_mask(spans: Tensor, total_len: int, block_size: int = 128):
    """A FlexAttention `BlockMask` `(B, 1, T, T)` of a `(B, 7)` span table, on its device.

    The mask keeps per-tile indices and the mask_mod; attention never reads a dense mask.
    (torch's eager `create_block_mask` does evaluate the mask_mod once over the grid to
    classify tiles, a transient bool `(B, 1, T, T)`, 1 MB at B = 4, T = 512, shared by every
    layer.) transformers' `flex_attention` implementation takes it as the attention mask
    unchanged (a 4D BlockMask is "already prepared": masking_utils._preprocess_mask_arguments
    returns it as is, integrations/flex_attention.flex_attention_forward passes it on as
    `block_mask`).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    if spans.ndim != 2 or spans.shape[1] != SPAN_COLUMNS:
        raise ValueError(
            f"flex_attention needs a (B, {SPAN_COLUMNS}) span table; got shape {tuple(spans.shape)}"
            " (build the Collator with attention='spans')"
        )
    return create_block_mask(
        span_mask_mod(spans), spans.shape[0], None, total_len, total_len, device=spans.device, BLOCK_SIZE=block_size
    )


def select_rows(mask: Tensor, rows: Tensor, width: int) -> Tensor:
    """The rows `(V,)` of a dense `(B, 1, T, T)` mask trimmed to `width`, or of a `(B, 7)`
    span table (whose coordinates do not depend on the padded width)."""
    if mask.ndim == 2:
        return mask[rows]
    return mask[rows][:, :, :width, :width]


@contextlib.contextmanager
def uncompiled_flex() -> Iterator[None]:
    """Run transformers' `flex_attention` unfused (not through torch.compile) inside the block.

    For CPU checks of the mask only: transformers compiles flex_attention on first use,
    which takes ~25 s cold on a CPU, and with torch 2.13 inductor's CPU flex kernel failed to
    compile (C++ errors) once a second shape made it recompile with dynamic shapes. The
    unfused path computes the same attention from the same BlockMask.
    """
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    def unfused(query, key, value, training=False, **kwargs):
        return flex_attention(query, key, value, **kwargs)

    saved = hf_flex.compile_friendly_flex_attention
    hf_flex.compile_friendly_flex_attention = unfused
    try:
        with warnings.catch_warnings():  # torch's note that unfused flex is slow: here on purpose
            warnings.filterwarnings("ignore", message=".*without torch.compile.*")
            yield
    finally:
        hf_flex.compile_friendly_flex_attention = saved
