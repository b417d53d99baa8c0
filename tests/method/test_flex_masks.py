"""FlexAttention's span tables and mask_mod against the dense masks of stepjepa.method.masks, and
the forward loss through a tiny Llama with `flex_attention` against `sdpa` (CPU: forward only;
torch has no FlexAttention backward there, so training refuses it in one line)."""

from __future__ import annotations

import logging

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import create_mask

from stepjepa.config import ConfigError, ModelConfig
from stepjepa.method.collate import collate
from stepjepa.method.flex_masks import attention_spans, block_mask, dense_from_spans, span_mask_mod, uncompiled_flex
from stepjepa.method.forward import step_jepa_forward
from stepjepa.method.masks import causal_mask, layout_mask
from stepjepa.model.modeling import check_attention_device
from stepjepa.training.train import main
from tests.support.tiny_llama import PRED, ROWS, UA_ROWS, tiny_llama
from tests.support.train import write_checkable_rows, write_params

LAYOUTS = ("inline", "two_pass", "packed")

example_st = st.integers(1, 12).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1), st.booleans()).map(
        lambda t: (t[0], min(t[1], t[2]), max(t[1], t[2]), t[3] and t[1] != t[2])
    )
)


def dense(layout: str, n, s1, s2, k: int, valid, total: int) -> torch.Tensor:
    if layout == "causal":
        return causal_mask(n, total)
    return layout_mask(layout, n, s1, s2, k, valid, total)


def left_padded(mask: torch.Tensor, laid_out: torch.Tensor) -> torch.Tensor:
    """A right-padded dense mask as the same rows left-padded: each row's real block moves
    to the end; the padding in front sees itself, as padding does in the dense masks."""
    total = mask.shape[-1]
    out = torch.eye(total, dtype=torch.bool).repeat(mask.shape[0], 1, 1, 1)
    for b, length in enumerate(laid_out.tolist()):
        out[b, 0, total - length :, total - length :] = mask[b, 0, :length, :length]
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(example_st, min_size=1, max_size=4),
    st.integers(0, 3),
    st.sampled_from(("causal", *LAYOUTS)),
    st.integers(0, 5),
    st.sampled_from(("right", "left")),
)
def test_mask_mod_equals_the_dense_mask(examples, k: int, layout: str, extra: int, side: str) -> None:
    """flex's own evaluation of the mask_mod over every (q, kv), padding rows included."""
    n, s1, s2, valid = (torch.tensor(col) for col in zip(*examples))
    laid_out = n if layout == "causal" else (n + valid * (k + (s2 - s1 if layout == "packed" else 0)))
    total = int(laid_out.max()) + extra
    want = dense(layout, n, s1, s2, k, valid, total)
    if side == "left":
        want = left_padded(want, laid_out)
    spans = attention_spans(layout, n, s1, s2, k, valid, total, padding_side=side)
    got = create_mask(span_mask_mod(spans), len(examples), 1, total, total, device="cpu")
    assert torch.equal(got, want)
    assert torch.equal(dense_from_spans(spans, total), want)


def test_span_table_of_the_docstring_example() -> None:
    one = torch.tensor([1])
    spans = attention_spans("inline", torch.tensor([5]), one, torch.tensor([3]), 1, torch.tensor([True]), 7)
    assert spans.tolist() == [[0, 6, 3, 4, 0, -1, -1]]


@pytest.mark.parametrize(
    "layout, views",
    [(layout, "steps") for layout in LAYOUTS] + [("two_pass", "user_assistant"), ("packed", "user_assistant")],
)
def test_collated_span_tables_describe_the_collated_dense_masks(layout: str, views: str) -> None:
    rows = UA_ROWS if views == "user_assistant" else ROWS
    for k in range(4):
        kwargs = dict(k=k, layout=layout, predictor_ids=PRED[:k], pad_id=0, views=views, pad_to_multiple_of=8)
        want, got = collate(rows, **kwargs), collate(rows, attention="spans", **kwargs)
        for key in ("attention_mask", "lm_attention_mask"):
            assert got[key].shape == (len(rows), 7) and got[key].dtype == torch.long
            assert torch.equal(dense_from_spans(got[key], want[key].shape[-1]), want[key]), (key, k)
        for key in set(want) - {"attention_mask", "lm_attention_mask"}:
            assert torch.equal(got[key], want[key]), key


def test_block_mask_skips_the_blocks_the_layout_hides() -> None:
    """A long packed row: the Step-2 copy's blocks skip the plain row, so fewer blocks are
    computed than by causal attention over the same laid-out length."""
    n, s1, s2, valid = torch.tensor([200]), torch.tensor([20]), torch.tensor([150]), torch.tensor([True])
    total = 200 + 2 + 130
    packed = block_mask(attention_spans("packed", n, s1, s2, 2, valid, total), total, block_size=32)
    causal = block_mask(attention_spans("causal", torch.tensor([total]), s1, s2, 2, valid, total), total, block_size=32)
    assert packed.shape == (1, 1, total, total)
    assert packed.sparsity() > causal.sparsity() + 10


def test_block_mask_refuses_a_dense_mask() -> None:
    with pytest.raises(ValueError, match="span table"):
        block_mask(causal_mask(torch.tensor([3])), 3)


@pytest.fixture(scope="module")
def flex_and_sdpa():
    return tiny_llama("flex_attention"), tiny_llama("sdpa")


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_flex_forward_loss_equals_sdpa(flex_and_sdpa, layout: str) -> None:
    """Inference only: on CPU flex runs forward, never backward. Unfused here (uncompiled_flex
    says why); the GPU check (benchmarks/gpu_check.py) runs transformers' compiled path."""
    from transformers.integrations import flex_attention as hf_flex

    flex, sdpa = flex_and_sdpa
    kwargs = dict(k=2, layout=layout, predictor_ids=PRED[:2], pad_id=0)
    with uncompiled_flex():
        unfused, calls = hf_flex.compile_friendly_flex_attention, []
        hf_flex.compile_friendly_flex_attention = lambda *a, **kw: calls.append(kw["block_mask"]) or unfused(*a, **kw)
        got = step_jepa_forward(flex, collate(ROWS, attention="spans", **kwargs), layout=layout, lam=0.5)
    assert len(calls) == 2 * (2 if layout == "two_pass" else 1), "every layer of every pass attends through flex"
    assert all(type(mask).__name__ == "BlockMask" for mask in calls)
    want = step_jepa_forward(sdpa, collate(ROWS, **kwargs), layout=layout, lam=0.5)
    assert got.n_valid == want.n_valid == 3
    for name in ("loss", "lm_loss", "jepa_loss"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), atol=1e-5, rtol=0)


def test_training_on_cpu_refuses_flex_in_one_line() -> None:
    cfg = ModelConfig(attn_implementation="flex_attention")
    with pytest.raises(ConfigError, match=r"^model\.attn_implementation=flex_attention trains on CUDA only") as err:
        check_attention_device(cfg, "cpu")
    assert "\n" not in str(err.value)
    check_attention_device(cfg, "cuda:0")
    check_attention_device(ModelConfig(), "cpu")


def test_stepjepa_train_on_cpu_with_flex_logs_one_line_naming_the_key(tmp_path, caplog) -> None:
    """Refused before data or model are loaded, exit status 2: the model folder is empty and
    the rows file holds one row, which the checks before the imports pass and loading either
    would refuse with another message."""
    (tmp_path / "model").mkdir()
    params = write_params(tmp_path / "params.yaml", tmp_path / "model")
    argv = [
        "--params",
        str(params),
        "--set",
        "model.attn_implementation=flex_attention",
        "--data",
        str(write_checkable_rows(tmp_path / "rows.parquet")),
        "--out",
        str(tmp_path / "run"),
    ]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert errors[0].getMessage().startswith("model.attn_implementation=flex_attention trains on CUDA only")
