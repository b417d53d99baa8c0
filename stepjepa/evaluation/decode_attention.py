"""Single-token (decoding) attention as two matmuls, for batched generation on CPU.

PyTorch's CPU `scaled_dot_product_attention` runs its flash kernel per (row, head) block;
for one query token against a few hundred cached keys that is about twice as slow as
`softmax(q k^T) v` written as two batched matmuls (measured in
`benchmarks/bench_generation.py`), and at batch 64 it was half of each decoding step.
Query heads are grouped by the key/value head they share (GQA), so no key or value is
copied. Everything else (prefill, training, GPUs, softcapping, attention sinks, learned
position biases) goes to transformers' own SDPA function unchanged.

`cpu_decode_attention(model)` switches a model that uses SDPA to this function for the
duration of a `with` block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

NAME = "stepjepa_cpu_decode"
_UNSUPPORTED_KWARGS = ("softcap", "s_aux", "sinks", "position_bias")


def decode_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (B, H, q, D), key/value (B, Hkv, T, D).

    Returns (B, q, H, Dv) like `sdpa_attention_forward`, which handles every call that is
    not one query token on CPU.
    """
    if (
        query.shape[2] != 1
        or query.device.type != "cpu"
        or (dropout and module.training)
        or any(kwargs.get(name) is not None for name in _UNSUPPORTED_KWARGS)
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    scale = dim**-0.5 if scaling is None else scaling
    # Query head h attends with key/value head h // (heads // kv_heads), as in `repeat_kv`.
    # Scaling the one query row is cheaper than scaling T scores.
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim) * scale
    scores = torch.matmul(grouped, key.transpose(-1, -2))  # (B, Hkv, group, T)
    if attention_mask is not None:
        mask = attention_mask  # (B or 1, 1, 1, T), or per head (B, H, 1, T)
        if mask.shape[1] != 1:
            mask = mask.reshape(mask.shape[0], kv_heads, heads // kv_heads, mask.shape[-1])
        if mask.dtype == torch.bool:
            scores.masked_fill_(mask.logical_not(), torch.finfo(scores.dtype).min)
        else:
            scores += mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    output = torch.matmul(probs, value)  # (B, Hkv, group, Dv)
    return output.reshape(batch, 1, heads, value.shape[-1]), None


AttentionInterface.register(NAME, decode_attention_forward)
AttentionMaskInterface.register(NAME, sdpa_mask)
assert ALL_MASK_ATTENTION_FUNCTIONS[NAME] is sdpa_mask


@contextmanager
def cpu_decode_attention(model: PreTrainedModel) -> Iterator[bool]:
    """Use `decode_attention_forward` inside the block if the model runs SDPA; yields whether it does."""
    previous = model.config._attn_implementation
    if previous != "sdpa" or not model._can_set_attn_implementation():
        yield False
        return
    model.set_attn_implementation(NAME)
    try:
        yield True
    finally:
        model.set_attn_implementation(previous)
