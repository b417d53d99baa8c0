"""Masks of every layout against a loop-by-loop reference written from docs/step-jepa.md
(`ref_mask`, tests/support/reference_masks.py; test_collate.py checks collate against it too)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjepa.method import masks
from stepjepa.method.masks import causal_mask, inline_mask, layout_mask, packed_mask, to_model_mask
from tests.support.reference_masks import ref_mask


def ref_length(layout: str, n: int, s1: int, s2: int, valid: bool, k: int) -> int:
    if not valid or layout == "causal":
        return n
    return n + k + (s2 - s1 if layout == "packed" else 0)


def build(layout: str, examples: list[tuple[int, int, int, bool]], k: int, total: int | None = None) -> torch.Tensor:
    n, s1, s2, valid = (torch.tensor(col) for col in zip(*examples))
    if layout == "causal":
        return causal_mask(n, total)
    return layout_mask(layout, n, s1, s2, k, valid, total)


def check_against_reference(layout: str, examples, k: int, total: int | None = None) -> None:
    got = build(layout, examples, k, total)
    width = max(ref_length(layout, *e, k=k) for e in examples) if total is None else total
    assert got.shape == (len(examples), 1, width, width) and got.dtype == torch.bool
    for b, (n, s1, s2, valid) in enumerate(examples):
        want = torch.tensor(ref_mask(layout, n, s1, s2, k, valid, width))
        assert torch.equal(got[b, 0], want), (layout, n, s1, s2, k, valid)
    assert got.diagonal(dim1=-2, dim2=-1).all(), "every row attends at least to itself"


def all_small_examples(max_n: int = 6) -> list[tuple[int, int, int, bool]]:
    """Every (n, s1_end, s2_end) with 0 <= s1_end < s2_end < n <= max_n, plus invalid rows."""
    valid = [(n, s1, s2, True) for n in range(2, max_n + 1) for s1, s2 in itertools.combinations(range(n), 2)]
    return valid + [(n, 0, 0, False) for n in range(1, max_n + 1)]


@pytest.mark.parametrize("layout", ["inline", "two_pass", "packed", "causal"])
@pytest.mark.parametrize("k", range(5))
def test_every_small_configuration_in_one_ragged_batch(layout: str, k: int) -> None:
    check_against_reference(layout, all_small_examples(), k)


@pytest.mark.parametrize("layout", ["inline", "packed"])
def test_every_small_configuration_alone(layout: str) -> None:
    for example, k in itertools.product(all_small_examples(5), range(5)):
        check_against_reference(layout, [example], k)


example_st = st.integers(1, 14).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(0, n - 1), st.integers(0, n - 1), st.booleans()).map(
        lambda e: (e[0], min(e[1], e[2]), max(e[1], e[2]), e[3] and e[1] != e[2])
    )
)


@settings(max_examples=150, deadline=None)
@given(
    layout=st.sampled_from(["inline", "two_pass", "packed", "causal"]),
    examples=st.lists(example_st, min_size=1, max_size=5),
    k=st.integers(0, 4),
    extra=st.integers(0, 3),
)
def test_random_ragged_batches_match_reference(layout, examples, k, extra) -> None:
    width = max(ref_length(layout, *e, k=k) for e in examples) + extra
    check_against_reference(layout, examples, k, width)


def parse_drawing(doc: str) -> torch.Tensor:
    """The matrix drawn after '::' in a docstring (rows: a 3-char label, then 1/. cells)."""
    body = doc.split("::", 1)[1].strip("\n").split("\n\n")[0]
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return torch.tensor([[c == "1" for c in line[4:].split()] for line in lines])


def test_docstring_drawings_are_exact() -> None:
    t = torch.tensor
    assert torch.equal(causal_mask(t([3]), 4)[0, 0], parse_drawing(causal_mask.__doc__))
    got = inline_mask(t([5]), t([1]), t([3]), 1, t([True]), 7)[0, 0]
    assert torch.equal(got, parse_drawing(inline_mask.__doc__))
    got = packed_mask(t([4]), t([1]), t([2]), 1, t([True]))[0, 0]
    assert torch.equal(got, parse_drawing(packed_mask.__doc__))


def test_two_pass_views_use_the_inline_mask() -> None:
    args = (torch.tensor([7, 5]), torch.tensor([2, 1]), torch.tensor([4, 3]), 2, torch.tensor([True, False]))
    assert torch.equal(layout_mask("two_pass", *args), inline_mask(*args))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_eager_mask_is_additive_in_model_dtype(dtype) -> None:
    mask = inline_mask(torch.tensor([6, 3]), torch.tensor([1, 0]), torch.tensor([3, 0]), 2, torch.tensor([True, False]))
    eager = to_model_mask(mask, "eager", dtype)
    assert eager.dtype == dtype and eager.shape == mask.shape
    assert torch.equal(eager == 0, mask)
    assert bool((eager[~mask] == torch.finfo(dtype).min).all())
    assert to_model_mask(mask, "sdpa", dtype) is mask


def test_bad_values_name_the_parameter() -> None:
    t = torch.tensor
    with pytest.raises(ValueError, match="attn_implementation"):
        to_model_mask(causal_mask(t([2])), "flash_attention_2", torch.float32)
    with pytest.raises(ValueError, match="bool"):
        to_model_mask(causal_mask(t([2])).float(), "eager", torch.float32)
    with pytest.raises(ValueError, match="layout"):
        layout_mask("inlined", t([4]), t([1]), t([2]), 1, t([True]))
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="k "):
            masks.check_k(bad)
    with pytest.raises(ValueError, match="total_len"):
        inline_mask(t([4]), t([1]), t([2]), 2, t([True]), total_len=5)
