"""Attention masks of the Step-JEPA layouts, as pure functions of lengths and spans.

Every builder takes per-example tensors in the coordinates of the *original* tokenised
row (`lengths` n, `s1_end`, `s2_end`, `valid`, all shape `(B,)`) plus K, and returns a
boolean mask `(B, 1, T, T)`: `mask[b, 0, i, j]` is True when query i may attend key j.
Rows are right-padded to T; a padding row attends only to itself, so no row is ever
fully masked (an all -inf row gives NaN in eager attention; see docs/stack-notes.md#custom-attention-masks).

All three layouts reduce to one rule with two per-query bounds `lo[i]`, `hi[i]`:
query i may attend key j iff `j <= i and (j >= lo[i] or j <= hi[i])`. Causal rows have
lo = 0; an isolated block starting at S has lo = S; packed predictors add hi = s1_end
to reach back into the plain prefix; padding has lo = i (itself only). Layouts are
defined in docs/step-jepa.md sections 3 and 5.

The original LLM-JEPA view pair (section 8) uses the same builders: its user turn
`[0, u_end]` plays Step 1 and its assistant turn `[u_end + 1, a_end]` plays Step 2, so
`s1_end = u_end` and `s2_end = a_end` (`stepjepa.vocabulary.PAIR_COLUMNS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stepjepa.vocabulary import LAYOUTS, Layout


def check_layout(layout: str) -> None:
    """Raise a ValueError naming `layout` unless it is one of LAYOUTS."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")


def check_k(k: int) -> None:
    """Raise a ValueError naming `k` unless it is an int >= 0."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k (number of predictor tokens) must be an integer >= 0; got {k!r}")


def _positions(like: Tensor, total_len: int) -> Tensor:
    """`(1, T)` arange on the device of `like`."""
    return torch.arange(total_len, device=like.device).unsqueeze(0)


def _resolve_total_len(laid_out: Tensor, total_len: int | None) -> int:
    longest = int(laid_out.max()) if laid_out.numel() else 0
    if total_len is None:
        return longest
    if total_len < longest:
        raise ValueError(f"total_len={total_len} is shorter than the longest laid-out row ({longest})")
    return total_len


def mask_from_bounds(lo: Tensor, hi: Tensor) -> Tensor:
    """`(B, T)` bounds -> `(B, 1, T, T)` bool mask: `j <= i and (j >= lo[i] or j <= hi[i])`."""
    total_len = lo.shape[1]
    i = torch.arange(total_len, device=lo.device).view(1, total_len, 1)
    j = torch.arange(total_len, device=lo.device).view(1, 1, total_len)
    allowed = (j <= i) & ((j >= lo.unsqueeze(-1)) | (j <= hi.unsqueeze(-1)))
    return allowed.unsqueeze(1)


def causal_mask(lengths: Tensor, total_len: int | None = None) -> Tensor:
    """Plain causal mask of a right-padded batch: `(B,)` lengths -> `(B, 1, T, T)` bool.

    lengths = [3], total_len = 4 (the last row is padding, it sees only itself)::

        a   1 . . .
        b   1 1 . .
        c   1 1 1 .
        pad . . . 1
    """
    total_len = _resolve_total_len(lengths, total_len)
    pos = _positions(lengths, total_len)
    lo = torch.where(pos >= lengths.unsqueeze(1), pos, 0)
    return mask_from_bounds(lo, torch.full_like(lo, -1))


def laid_out_lengths(layout: str, lengths: Tensor, s1_end: Tensor, s2_end: Tensor, k: int, valid: Tensor) -> Tensor:
    """Length of each row after `layout`, which padding and compute scale with: n + K
    (inline, and two_pass's JEPA pass), n + K + |Step 2| (packed); n without a valid pair.
    Plain ints work as well as `(B,)` tensors (one row's length when planning batches)."""
    return (
        packed_lengths(lengths, s1_end, s2_end, k, valid) if layout == "packed" else inline_lengths(lengths, k, valid)
    )


def inline_lengths(lengths: Tensor, k: int, valid: Tensor) -> Tensor:
    """`(B,)` length of the inline row: n + K for valid examples, n otherwise."""
    return lengths + k * valid


def inline_mask(
    lengths: Tensor, s1_end: Tensor, s2_end: Tensor, k: int, valid: Tensor, total_len: int | None = None
) -> Tensor:
    """Inline layout (seed's): K predictors after Step 1, Step 2 isolated. `(B, 1, T, T)` bool.

    With S = s1_end + K + 1 and E = s2_end + K, Step-2 queries (S <= i <= E) see only
    S <= j <= i; all other real queries are causal and Step 3+ sees Step 2. Invalid
    examples get no predictors and a plain causal mask. Example n = 5, s1_end = 1,
    s2_end = 3, K = 1 (tokens Q S1 P S2 S2 S3; S = 3, E = 4), total_len = 7::

        Q   1 . . . . . .
        S1  1 1 . . . . .
        P   1 1 1 . . . .
        S2  . . . 1 . . .
        S2  . . . 1 1 . .
        S3  1 1 1 1 1 1 .
        pad . . . . . . 1
    """
    check_k(k)
    laid_out = inline_lengths(lengths, k, valid)
    total_len = _resolve_total_len(laid_out, total_len)
    pos = _positions(lengths, total_len)
    kk = (k * valid.long()).unsqueeze(1)
    start = s1_end.unsqueeze(1) + kk + 1
    in_step2 = valid.unsqueeze(1) & (pos >= start) & (pos <= s2_end.unsqueeze(1) + kk)
    lo = torch.where(in_step2, start, 0)
    lo = torch.where(pos >= laid_out.unsqueeze(1), pos, lo)
    return mask_from_bounds(lo, torch.full_like(lo, -1))


def packed_lengths(lengths: Tensor, s1_end: Tensor, s2_end: Tensor, k: int, valid: Tensor) -> Tensor:
    """`(B,)` length of the packed row: n + K + |Step 2| for valid examples, n otherwise."""
    return lengths + valid * (k + s2_end - s1_end)


def packed_mask(
    lengths: Tensor, s1_end: Tensor, s2_end: Tensor, k: int, valid: Tensor, total_len: int | None = None
) -> Tensor:
    """Packed layout: plain causal row, then K predictors, then an isolated Step-2 copy.

    Predictors (n <= i < n+K) see the plain prefix 0..s1_end and earlier predictors;
    the copy (n+K <= i < n+K+|Step 2|) sees only itself, causally. Invalid examples are
    the plain row. Example n = 4, s1_end = 1, s2_end = 2, K = 1 (tokens Q S1 S2 S3 | P | S2')::

        Q   1 . . . . .
        S1  1 1 . . . .
        S2  1 1 1 . . .
        S3  1 1 1 1 . .
        P   1 1 . . 1 .
        S2' . . . . . 1
    """
    check_k(k)
    laid_out = packed_lengths(lengths, s1_end, s2_end, k, valid)
    total_len = _resolve_total_len(laid_out, total_len)
    pos = _positions(lengths, total_len)
    n = lengths.unsqueeze(1)
    copy_start = n + k * valid.long().unsqueeze(1)
    is_pred = (pos >= n) & (pos < copy_start)
    is_copy = (pos >= copy_start) & (pos < laid_out.unsqueeze(1))
    lo = torch.where(is_pred, n, 0)
    lo = torch.where(is_copy, copy_start, lo)
    lo = torch.where(pos >= laid_out.unsqueeze(1), pos, lo)
    hi = torch.where(is_pred, s1_end.unsqueeze(1), -1)
    return mask_from_bounds(lo, hi)


def layout_mask(
    layout: Layout,
    lengths: Tensor,
    s1_end: Tensor,
    s2_end: Tensor,
    k: int,
    valid: Tensor,
    total_len: int | None = None,
) -> Tensor:
    """The mask of the pass that yields the views: inline for `inline` and `two_pass`
    (whose LM pass uses `causal_mask`), packed for `packed`. `(B, 1, T, T)` bool."""
    check_layout(layout)
    build = packed_mask if layout == "packed" else inline_mask
    return build(lengths, s1_end, s2_end, k, valid, total_len)


def to_model_mask(mask: Tensor, attn_implementation: str, dtype: torch.dtype) -> Tensor:
    """Convert a bool `(B, 1, T, T)` mask to what the attention implementation expects.

    `sdpa` takes the boolean mask (True = attend). `eager` adds the mask to the scores,
    so it needs an additive float in the model's dtype: 0 where allowed, the dtype's
    most negative finite value elsewhere (a bool mask there is silently wrong).
    """
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor; got {mask.dtype}")
    if attn_implementation == "sdpa":
        return mask
    if attn_implementation == "eager":
        additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
        return additive.masked_fill_(~mask, torch.finfo(dtype).min)
    raise ValueError(
        f"attn_implementation must be 'sdpa' or 'eager' for Step-JEPA's dense 4D masks; got {attn_implementation!r}"
    )
