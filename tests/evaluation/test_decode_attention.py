"""Single-token CPU attention (stepjepa/evaluation/decode_attention.py) against PyTorch's SDPA."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, LlamaConfig

from stepjepa.evaluation.decode_attention import NAME, cpu_decode_attention, decode_attention_forward


class Module(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def reference(query, key, value, mask, scaling):
    """SDPA with every query head given its key/value head explicitly (`repeat_interleave`)."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return output.transpose(1, 2)


@settings(max_examples=80, deadline=None)
@given(
    batch=st.integers(1, 4),
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 3),
    length=st.integers(1, 40),
    dim=st.sampled_from([4, 8, 16]),
    mask_kind=st.sampled_from(["none", "bool", "float", "per_head_bool"]),
    scaling=st.sampled_from([None, 0.3]),
    seed=st.integers(0, 2**16),
)
def test_matches_sdpa(batch, kv_heads, groups, length, dim, mask_kind, scaling, seed):
    generator = torch.Generator().manual_seed(seed)
    heads = kv_heads * groups
    query = torch.randn(batch, heads, 1, dim, generator=generator)
    key = torch.randn(batch, kv_heads, length, dim, generator=generator)
    value = torch.randn(batch, kv_heads, length, dim, generator=generator)
    visible = torch.rand(batch, 1 if mask_kind != "per_head_bool" else heads, 1, length, generator=generator) < 0.6
    visible[..., -1] = True  # a decoding query always sees itself
    mask = {
        "none": None,
        "bool": visible,
        "per_head_bool": visible,
        "float": torch.zeros(visible.shape).masked_fill(~visible, float("-inf")),
    }[mask_kind]
    got, weights = decode_attention_forward(Module(groups), query, key, value, mask, scaling=scaling)
    assert weights is None
    torch.testing.assert_close(got, reference(query, key, value, mask, scaling), rtol=1e-5, atol=1e-5)


def test_strided_cache_views_and_the_prefill_path():
    """Keys that are views of a larger buffer (as the preallocated cache returns), and q_len > 1."""
    buffer = torch.randn(2, 2, 50, 8)
    key, value = buffer[:, :, :30], torch.randn(2, 2, 50, 8)[:, :, :30]
    query = torch.randn(2, 4, 1, 8)
    got, _ = decode_attention_forward(Module(2), query, key, value, None)
    torch.testing.assert_close(got, reference(query, key, value, None, None), rtol=1e-5, atol=1e-5)
    queries = torch.randn(2, 4, 30, 8)
    causal = torch.ones(30, 30, dtype=torch.bool).tril()[None, None].expand(2, 1, 30, 30)
    got, _ = decode_attention_forward(Module(2), queries, key, value, causal)
    torch.testing.assert_close(got, reference(queries, key, value, causal, None), rtol=1e-5, atol=1e-5)


def test_context_switches_only_sdpa_models_and_restores_them():
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.inference_mode():
        expected = model.generate(ids, max_new_tokens=6, do_sample=False)
        with cpu_decode_attention(model) as switched:
            assert switched and model.config._attn_implementation == NAME
            got = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(got, expected)
    model.set_attn_implementation("eager")
    with cpu_decode_attention(model) as switched:
        assert not switched and model.config._attn_implementation == "eager"
