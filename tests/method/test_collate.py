"""collate against a list-splicing reference; length-grouped batching; padding fraction."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjepa.method.collate import collate, count_targets, length_grouped_batches, padding_fraction, shift_targets
from tests.support.reference_masks import ref_mask

PAD = 0
PRED = [901, 902, 903, 904]


def make_example(n: int, s1: int, s2: int, valid: bool, prompt: int, seed: int = 0) -> dict:
    """Row with distinct ids 100.. and labels on tokens >= `prompt` (prompt <= Step 1 start)."""
    rng = random.Random(seed)
    ids = [100 + rng.randrange(700) for _ in range(n)]
    return {
        "input_ids": ids,
        "labels": [-100] * prompt + ids[prompt:],
        "step1_span": [prompt, s1] if valid else None,
        "step2_span": [s1 + 1, s2] if valid else None,
        "jepa_valid": valid,
    }


def ref_layout(ex: dict, k: int, layout: str) -> dict:
    """The laid-out row, spliced with plain lists straight from docs/step-jepa.md section 3."""
    ids, labels, n = list(ex["input_ids"]), list(ex["labels"]), len(ex["input_ids"])
    valid = ex["jepa_valid"]
    kk = k if valid else 0
    s1 = ex["step1_span"][1] if valid else 0
    s2 = ex["step2_span"][1] if valid else 0
    origin = list(range(n))  # original index of each laid-out token, None for appended/predictors
    if layout == "packed":
        m = s2 - s1 if valid else 0
        out_ids = ids + PRED[:kk] + ids[s1 + 1 : s2 + 1][:m]
        out_labels = labels + [-100] * (kk + m)
        positions = list(range(n)) + [s1 + 1 + q for q in range(kk)] + [s1 + kk + 1 + q for q in range(m)]
        origin = origin + [None] * (kk + m)
        views = ((n + kk - 1) if kk else s1, n + kk + m - 1)
    else:
        out_ids = ids[: s1 + 1] + PRED[:kk] + ids[s1 + 1 :] if valid else ids
        out_labels = labels[: s1 + 1] + [-100] * kk + labels[s1 + 1 :] if valid else labels
        origin = origin[: s1 + 1] + [None] * kk + origin[s1 + 1 :] if valid else origin
        positions = list(range(len(out_ids)))
        views = (s1 + kk, s2 + kk)
    # Each original token is trained to predict the label of the next original token.
    shift = [-100 if t is None or t + 1 >= n else labels[t + 1] for t in origin]
    return {
        "input_ids": out_ids,
        "labels": out_labels,
        "shift_labels": shift,
        "position_ids": positions,
        "views": views if valid else (0, 0),
        "s1": s1,
        "s2": s2,
    }


def check_batch(examples: list[dict], k: int, layout: str, multiple: int | None = None) -> dict:
    batch = collate(examples, k=k, layout=layout, predictor_ids=PRED[:k], pad_id=PAD, pad_to_multiple_of=multiple)
    refs = [ref_layout(e, k, layout) for e in examples]
    width = max(len(r["input_ids"]) for r in refs)
    if multiple:
        width = -(-width // multiple) * multiple
    b_size = len(examples)
    assert batch["input_ids"].shape == (b_size, width)
    assert batch["attention_mask"].shape == (b_size, 1, width, width)
    for b, (ex, ref) in enumerate(zip(examples, refs)):
        length, pad = len(ref["input_ids"]), width - len(ref["input_ids"])
        assert batch["lengths"][b] == length
        assert batch["input_ids"][b].tolist() == ref["input_ids"] + [PAD] * pad
        assert batch["labels"][b].tolist() == ref["labels"] + [-100] * pad
        assert batch["shift_labels"][b].tolist() == ref["shift_labels"] + [-100] * pad
        assert batch["position_ids"][b].tolist() == ref["position_ids"] + [0] * pad
        assert (batch["view1_index"][b].item(), batch["view2_index"][b].item()) == ref["views"]
        assert batch["jepa_valid"][b].item() == ex["jepa_valid"]
        n = len(ex["input_ids"])
        mask_layout = "packed" if layout == "packed" else "inline"
        want = ref_mask(mask_layout, n, ref["s1"], ref["s2"], k, ex["jepa_valid"], width)
        assert batch["attention_mask"][b, 0].tolist() == want
        plain_w = batch["lm_input_ids"].shape[1]
        assert batch["lm_input_ids"][b].tolist() == ex["input_ids"] + [PAD] * (plain_w - n)
        assert batch["lm_labels"][b].tolist() == ex["labels"] + [-100] * (plain_w - n)
        assert batch["lm_attention_mask"][b, 0].tolist() == ref_mask("causal", n, 0, 0, 0, False, plain_w)
        if ex["jepa_valid"]:  # views sit on the last predictor (or Step 1's end) and on Step 2's end
            v1, v2 = ref["views"]
            assert batch["input_ids"][b, v1] == (PRED[k - 1] if k else ex["input_ids"][ref["s1"]])
            assert batch["input_ids"][b, v2] == ex["input_ids"][ref["s2"]]
    assert not (batch["attention_mask"].sum(-1) == 0).any(), "no fully masked row"
    return batch


def small_examples(max_n: int = 6) -> list[dict]:
    rows = [
        make_example(n, s1, s2, True, prompt, seed=n * 100 + s1 * 10 + s2)
        for n in range(2, max_n + 1)
        for s1, s2 in itertools.combinations(range(n), 2)
        for prompt in sorted({0, s1})
    ]
    return rows + [make_example(n, 0, 0, False, n // 2, seed=n) for n in range(1, max_n + 1)]


@pytest.mark.parametrize("layout", ["inline", "two_pass", "packed"])
@pytest.mark.parametrize("k", range(5))
def test_every_small_configuration(layout: str, k: int) -> None:
    examples = small_examples()
    check_batch(examples, k, layout)  # one ragged batch of all of them
    for ex in examples[::7]:
        check_batch([ex], k, layout, multiple=8)


example_st = (
    st.integers(1, 16)
    .flatmap(
        lambda n: st.tuples(
            st.just(n), st.integers(0, n - 1), st.integers(0, n - 1), st.booleans(), st.integers(0, 10**6)
        )
    )
    .map(
        lambda e: make_example(
            e[0], min(e[1], e[2]), max(e[1], e[2]), e[3] and e[1] != e[2], prompt=min(e[1], e[2]) // 2, seed=e[4]
        )
    )
)


@settings(max_examples=120, deadline=None)
@given(
    examples=st.lists(example_st, min_size=1, max_size=6),
    k=st.integers(0, 4),
    layout=st.sampled_from(["inline", "two_pass", "packed"]),
    multiple=st.sampled_from([None, 8]),
)
def test_random_ragged_batches(examples, k, layout, multiple) -> None:
    check_batch(examples, k, layout, multiple)


@settings(max_examples=60, deadline=None)
@given(
    examples=st.lists(example_st, min_size=1, max_size=6),
    k=st.integers(0, 4),
    layout=st.sampled_from(["inline", "two_pass", "packed"]),
)
def test_count_targets_is_what_every_pass_scores(examples, k, layout) -> None:
    """The training loop normalises by `count_targets` before collating: it must be the
    number of targets of the layout's pass and of the plain pass alike."""
    batch = collate(examples, k=k, layout=layout, predictor_ids=PRED[:k], pad_id=PAD)
    plain = int((shift_targets(batch["lm_labels"]) != -100).sum())
    assert count_targets(examples) == plain == int((batch["shift_labels"] != -100).sum())


def test_labels_move_with_their_tokens_and_invalid_rows_stay_plain() -> None:
    valid, invalid = make_example(9, 3, 6, True, 2, seed=1), make_example(6, 0, 0, False, 2, seed=2)
    batch = collate([valid, invalid], k=3, predictor_ids=PRED[:3], pad_id=PAD)
    row, labels = batch["input_ids"][0], batch["labels"][0]
    kept = labels != -100
    assert torch.equal(labels[kept], row[kept]), "every label is its own token"
    assert labels[kept].tolist() == [x for x in valid["labels"] if x != -100]
    assert batch["input_ids"][1, :6].tolist() == invalid["input_ids"]
    assert not (batch["input_ids"][1] > 900).any(), "no predictors in an invalid row"


def test_accepts_numpy_rows_as_read_from_parquet() -> None:
    np = pytest.importorskip("numpy")
    ex = make_example(8, 2, 5, True, 1)
    as_np = {
        **ex,
        "input_ids": np.array(ex["input_ids"], dtype=np.int32),
        "labels": np.array(ex["labels"], dtype=np.int32),
        "step1_span": np.array(ex["step1_span"]),
        "step2_span": np.array(ex["step2_span"]),
        "jepa_valid": np.bool_(True),
    }
    a = collate([as_np], k=2, predictor_ids=PRED[:2], pad_id=PAD)
    b = collate([ex], k=2, predictor_ids=PRED[:2], pad_id=PAD)
    assert all(torch.equal(a[key], b[key]) for key in b) and a["input_ids"].dtype == torch.long


def test_bad_values_name_the_parameter() -> None:
    ex = [make_example(8, 2, 5, True, 1)]
    with pytest.raises(ValueError, match="k "):
        collate(ex, k=-1, predictor_ids=[], pad_id=PAD)
    with pytest.raises(ValueError, match="layout"):
        collate(ex, k=1, layout="inlined", predictor_ids=PRED[:1], pad_id=PAD)
    with pytest.raises(ValueError, match="predictor_ids"):
        collate(ex, k=2, predictor_ids=PRED[:1], pad_id=PAD)
    with pytest.raises(ValueError, match="s1_end < s2_end"):
        collate([{**ex[0], "step2_span": [9, 9]}], k=1, predictor_ids=PRED[:1], pad_id=PAD)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        collate(ex, k=1, predictor_ids=PRED[:1], pad_id=PAD, pad_to_multiple_of=0)


def test_length_grouped_batches_partition_and_reduce_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(1000)]
    batches = length_grouped_batches(lengths, batch_size=8, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) == 8 for b in batches)
    assert batches == length_grouped_batches(lengths, batch_size=8, seed=3)
    assert batches != length_grouped_batches(lengths, batch_size=8, seed=4)
    order = list(range(1000))
    rng.shuffle(order)
    random_batches = [order[i : i + 8] for i in range(0, 1000, 8)]
    assert padding_fraction(lengths, batches) < 0.1 < padding_fraction(lengths, random_batches)


def test_padding_fraction_counts_padded_positions() -> None:
    assert padding_fraction([4, 2, 3], [[0, 1], [2]]) == pytest.approx(1 - 9 / 11)
    assert padding_fraction([4, 2, 3], [[0, 1], [2]], pad_to_multiple_of=8) == pytest.approx(1 - 9 / 24)
    assert padding_fraction([], []) == 0.0
