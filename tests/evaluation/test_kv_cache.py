"""The preallocated KV cache and the shared-prefix cache (stepjepa/evaluation/kv_cache.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from stepjepa.evaluation.kv_cache import PreallocatedLayer, PrefixCache, supports_prefix_cache


def kv(batch: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, length, 4, generator=generator), torch.randn(batch, 2, length, 4, generator=generator)


@settings(max_examples=60, deadline=None)
@given(
    first=st.integers(0, 6),
    chunks=st.lists(st.integers(1, 5), min_size=1, max_size=8),
    capacity_slack=st.integers(0, 10),
)
def test_updates_equal_concatenation(first, chunks, capacity_slack):
    """Whatever the chunk sizes, and when they overflow the capacity, the cache is the concatenation."""
    keys, values = kv(3, first, seed=0)
    layer = PreallocatedLayer.holding(keys, values, capacity=first + capacity_slack)
    for i, size in enumerate(chunks):
        new_keys, new_values = kv(3, size, seed=i + 1)
        got_keys, got_values = layer.update(new_keys, new_values)
        keys, values = torch.cat([keys, new_keys], dim=-2), torch.cat([values, new_values], dim=-2)
        assert torch.equal(got_keys, keys) and torch.equal(got_values, values)
        assert layer.get_seq_length() == keys.shape[-2]


def test_updates_write_in_place_without_reallocating():
    layer = PreallocatedLayer.holding(*kv(2, 3, seed=0), capacity=10)
    buffer = layer.keys.data_ptr()
    for step in range(7):
        layer.update(*kv(2, 1, seed=step))
    assert layer.keys.data_ptr() == buffer and layer.get_seq_length() == 10


def test_rows_share_the_buffers_and_set_length_exposes_them():
    layer = PreallocatedLayer.holding(*kv(4, 2, seed=0), capacity=8)
    written_keys, written_values = kv(2, 3, seed=1)
    layer.rows(1, 3).update(written_keys, written_values)
    assert layer.get_seq_length() == 2  # the parent's length is the caller's to move
    layer.set_length(5)
    assert torch.equal(layer.keys[1:3, :, 2:5], written_keys)
    assert torch.equal(layer.values[1:3, :, 2:5], written_values)
    assert not layer.keys[[0, 3], :, 2:5].any(), "unwritten positions are zeros, never leftover memory"


def test_batch_selection_then_update_stays_correct():
    """transformers may replace `keys` (batch selection): the next update must not write into stale buffers."""
    keys, values = kv(3, 4, seed=0)
    layer = PreallocatedLayer.holding(keys, values, capacity=10)
    layer.batch_select_indices(torch.tensor([2, 0]))
    new_keys, new_values = kv(2, 1, seed=1)
    got_keys, _ = layer.update(new_keys, new_values)
    assert torch.equal(got_keys, torch.cat([keys[[2, 0]], new_keys], dim=-2))


def test_capacity_below_content_is_an_error():
    with pytest.raises(ValueError, match="capacity 2"):
        PreallocatedLayer.holding(*kv(1, 3, seed=0), capacity=2)


def tiny_causal_lm(config_class, **extra):
    config = config_class(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_supported_models():
    assert supports_prefix_cache(tiny_causal_lm(LlamaConfig))
    # Sliding-window layers keep only a window: a copied prefix would be wrong there.
    assert not supports_prefix_cache(tiny_causal_lm(MistralConfig, sliding_window=8))


def test_prefix_cache_holds_what_a_full_forward_computes():
    model = tiny_causal_lm(LlamaConfig)
    prompts = [[5, 6, 7, 8, 9], [5, 6, 7, 1], [5, 6, 7, 8, 2, 3]]
    prefix = PrefixCache.build(model, prompts)
    assert prefix.ids == [5, 6, 7]
    with torch.inference_mode():
        full = model(input_ids=torch.tensor([prompts[0]]), use_cache=True).cache
    for (keys, values), layer in zip(prefix.layers, full.layers, strict=True):
        torch.testing.assert_close(keys, layer.keys[:, :, :3])
        torch.testing.assert_close(values, layer.values[:, :, :3])
    batch = prefix.for_batch(2, capacity=9)
    assert batch.get_seq_length() == 3 and batch.layers[0].keys.shape[0] == 2


def test_no_prefix_when_prompts_share_nothing_or_a_prompt_would_be_all_prefix():
    model = tiny_causal_lm(LlamaConfig)
    assert PrefixCache.build(model, [[1, 2], [3, 4]]) is None
    # Every prompt keeps its last token out of the prefix: it produces the first logits.
    assert PrefixCache.build(model, [[1, 2, 3], [1, 2, 3]]).ids == [1, 2]
    assert PrefixCache.build(model, [[1], [1, 2]]) is None
