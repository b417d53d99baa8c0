"""The original LLM-JEPA view pair (`views="user_assistant"`) against a loop-based reference.

`ref_user_assistant` is written from docs/step-jepa.md section 8 alone, in terms of the
user turn `[0, u_end]` and the assistant turn `[u_end + 1, a_end]`, one token and one mask
cell at a time: it shares nothing with the Step-JEPA references in test_collate.py and
test_masks.py, nor with the library. The step columns of every row are deliberately
unrelated to the user/assistant ones, so a test would fail if collate read the wrong pair.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stepjepa.config import Config, ConfigError, config_from_dict
from stepjepa.method.batching import check_rows, laid_out_length
from stepjepa.method.collate import collate

PAD = 0
PRED = [901, 902, 903, 904]
LAYOUTS = ("two_pass", "packed")


def make_row(n: int, u_end: int, a_end: int, valid: bool, seed: int = 0) -> dict:
    """A row whose labels sit on the assistant turn; step columns are an unrelated pair."""
    rng = random.Random(seed)
    ids = [100 + rng.randrange(700) for _ in range(n)]
    labels = [ids[t] if valid and u_end < t <= a_end else -100 for t in range(n)]
    steps_ok = n >= 3
    return {
        "input_ids": ids,
        "labels": labels,
        "step1_span": [0, n - 3] if steps_ok else None,
        "step2_span": [n - 2, n - 2] if steps_ok else None,
        "jepa_valid": steps_ok,
        "invalid_reason": None if steps_ok else "fewer_than_2_steps",
        "user_span": [0, u_end] if valid else None,
        "assistant_span": [u_end + 1, a_end] if valid else None,
        "ua_valid": valid,
        "ua_invalid_reason": None if valid else "truncated_in_assistant",
    }


def ref_user_assistant(row: dict, k: int, layout: str) -> dict:
    """Laid-out tokens, labels, targets, positions, views and mask rows of one example."""
    ids, labels, n = row["input_ids"], row["labels"], len(row["input_ids"])
    valid = row["ua_valid"]
    u_end, a_end = (row["user_span"][1], row["assistant_span"][1]) if valid else (None, None)
    # Each laid-out token: (kind, original index or predictor slot).
    tokens: list[tuple[str, int]] = []
    if not valid:
        tokens = [("plain", t) for t in range(n)]
    elif layout == "packed":
        tokens = [("plain", t) for t in range(n)] + [("pred", q) for q in range(k)]
        tokens += [("copy", t) for t in range(u_end + 1, a_end + 1)]
    else:  # two_pass's JEPA pass: predictors right after the user turn
        tokens = [("plain", t) for t in range(u_end + 1)] + [("pred", q) for q in range(k)]
        tokens += [("plain", t) for t in range(u_end + 1, n)]
    out = {"input_ids": [], "labels": [], "shift_labels": [], "position_ids": []}
    for i, (kind, t) in enumerate(tokens):
        if kind == "pred":
            out["input_ids"].append(PRED[t])
            out["labels"].append(-100)
            out["shift_labels"].append(-100)
            out["position_ids"].append(u_end + 1 + t)
        elif kind == "copy":
            out["input_ids"].append(ids[t])
            out["labels"].append(-100)
            out["shift_labels"].append(-100)
            out["position_ids"].append(t + k)  # where the assistant sits after the predictors
        else:
            out["input_ids"].append(ids[t])
            out["labels"].append(labels[t])
            out["shift_labels"].append(labels[t + 1] if t + 1 < n else -100)
            out["position_ids"].append(i)
    if valid:
        view2 = len(tokens) - 1 if layout == "packed" else a_end + k
        view1 = (n + k - 1 if k else u_end) if layout == "packed" else u_end + k
        out["views"] = (view1, view2)
    else:
        out["views"] = (0, 0)
    out["tokens"] = tokens
    return out


def ref_allowed(tokens: list[tuple[str, int]], row: dict, layout: str, i: int, j: int) -> bool:
    """May laid-out query i attend key j (docs/step-jepa.md 5 and 8)."""
    if i >= len(tokens) or j >= len(tokens):
        return i == j  # padding sees itself only
    if j > i:
        return False
    (qkind, qt), (kkind, kt) = tokens[i], tokens[j]
    if not row["ua_valid"]:
        return True
    u_end, a_end = row["user_span"][1], row["assistant_span"][1]
    in_assistant = lambda kind, t: kind in ("plain", "copy") and u_end < t <= a_end  # noqa: E731
    if layout == "packed":
        if qkind == "plain":
            return kkind == "plain"
        if qkind == "pred":
            return kkind == "pred" or (kkind == "plain" and kt <= u_end)
        return kkind == "copy"  # the copy sees only itself
    if in_assistant(qkind, qt):
        return in_assistant(kkind, kt)  # the assistant is isolated from everything before it
    return True


def check(rows: list[dict], k: int, layout: str, multiple: int | None = None) -> None:
    batch = collate(
        rows,
        k=k,
        layout=layout,
        predictor_ids=PRED[:k],
        pad_id=PAD,
        pad_to_multiple_of=multiple,
        views="user_assistant",
    )
    refs = [ref_user_assistant(r, k, layout) for r in rows]
    width = max(len(r["input_ids"]) for r in refs)
    width = -(-width // multiple) * multiple if multiple else width
    assert batch["input_ids"].shape == (len(rows), width)
    for b, (row, ref) in enumerate(zip(rows, refs)):
        length = len(ref["input_ids"])
        pad = width - length
        assert batch["lengths"][b] == length == laid_out_length(row, k, layout, "user_assistant")
        assert batch["input_ids"][b].tolist() == ref["input_ids"] + [PAD] * pad
        assert batch["labels"][b].tolist() == ref["labels"] + [-100] * pad
        assert batch["shift_labels"][b].tolist() == ref["shift_labels"] + [-100] * pad
        assert batch["position_ids"][b].tolist() == ref["position_ids"] + [0] * pad
        assert (int(batch["view1_index"][b]), int(batch["view2_index"][b])) == ref["views"]
        assert bool(batch["jepa_valid"][b]) == row["ua_valid"]
        want = [[ref_allowed(ref["tokens"], row, layout, i, j) for j in range(width)] for i in range(width)]
        assert batch["attention_mask"][b, 0].tolist() == want, (layout, k, row["user_span"], row["assistant_span"])
        n = len(row["input_ids"])
        plain_w = batch["lm_input_ids"].shape[1]  # the LM pass is the plain SFT row
        assert batch["lm_input_ids"][b].tolist() == row["input_ids"] + [PAD] * (plain_w - n)
        assert batch["lm_labels"][b].tolist() == row["labels"] + [-100] * (plain_w - n)
        if row["ua_valid"]:
            v1, v2 = ref["views"]
            assert batch["input_ids"][b, v1] == (PRED[k - 1] if k else row["input_ids"][row["user_span"][1]])
            assert batch["input_ids"][b, v2] == row["input_ids"][row["assistant_span"][1]]


def small_rows(max_n: int = 6) -> list[dict]:
    rows = [
        make_row(n, u, a, True, seed=n * 100 + u * 10 + a)
        for n in range(2, max_n + 1)
        for u, a in itertools.combinations(range(n), 2)
    ]
    return rows + [make_row(n, 0, 0, False, seed=n) for n in range(1, max_n + 1)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("k", range(5))
def test_every_small_configuration(layout: str, k: int) -> None:
    rows = small_rows()
    check(rows, k, layout)  # one ragged batch of all of them
    for row in rows[::5]:
        check([row], k, layout, multiple=8)


row_st = (
    st.integers(1, 16)
    .flatmap(
        lambda n: st.tuples(
            st.just(n), st.integers(0, n - 1), st.integers(0, n - 1), st.booleans(), st.integers(0, 10**6)
        )
    )
    .map(lambda e: make_row(e[0], min(e[1], e[2]), max(e[1], e[2]), e[3] and e[1] != e[2], seed=e[4]))
)


@settings(max_examples=120, deadline=None)
@given(
    rows=st.lists(row_st, min_size=1, max_size=6),
    k=st.integers(0, 4),
    layout=st.sampled_from(LAYOUTS),
    multiple=st.sampled_from([None, 8]),
)
def test_random_ragged_batches(rows, k, layout, multiple) -> None:
    check(rows, k, layout, multiple)


@pytest.mark.parametrize("layout", ("inline", *LAYOUTS))
def test_the_steps_pair_ignores_the_new_columns(layout: str) -> None:
    """A row with the user/assistant columns lays out bit-identically under `steps`."""
    rows = small_rows(5)
    old = [{key: r[key] for key in ("input_ids", "labels", "step1_span", "step2_span", "jepa_valid")} for r in rows]
    a = collate(rows, k=2, layout=layout, predictor_ids=PRED[:2], pad_id=PAD)
    b = collate(old, k=2, layout=layout, predictor_ids=PRED[:2], pad_id=PAD, views="steps")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert [laid_out_length(r, 2, layout) for r in rows] == [laid_out_length(r, 2, layout) for r in old]


def test_inline_and_unknown_pairs_are_refused_by_name() -> None:
    rows = [make_row(8, 3, 6, True)]
    with pytest.raises(ValueError, match="train.views=user_assistant.*inline"):
        collate(rows, k=1, layout="inline", predictor_ids=PRED[:1], pad_id=PAD, views="user_assistant")
    with pytest.raises(ValueError, match="views must be one of"):
        collate(rows, k=1, layout="packed", predictor_ids=PRED[:1], pad_id=PAD, views="turns")
    with pytest.raises(ConfigError, match=r"train\.views=user_assistant needs train\.layout"):
        config_from_dict({"train": {"views": "user_assistant", "layout": "inline"}})
    with pytest.raises(ConfigError, match=r"sweep\.views.*sweep\.layout"):
        config_from_dict({"sweep": {"views": ["steps", "user_assistant"], "layout": "inline"}})
    with pytest.raises(ConfigError, match=r"train\.views"):
        config_from_dict({"train": {"views": "turns"}})
    bad = {**rows[0], "assistant_span": [4, 8]}
    with pytest.raises(ValueError, match="ua_valid examples \\[0\\].*user_span and assistant_span"):
        collate([bad], k=1, layout="packed", predictor_ids=PRED[:1], pad_id=PAD, views="user_assistant")


def test_old_data_without_the_columns_is_named() -> None:
    old = [{key: v for key, v in make_row(8, 3, 6, True).items() if not key.startswith(("user", "assistant", "ua"))}]
    with pytest.raises(ValueError, match="ua_valid.*re-tokenise"):
        collate(old, k=1, layout="packed", predictor_ids=PRED[:1], pad_id=PAD, views="user_assistant")
    cfg = config_from_dict({"train": {"views": "user_assistant", "layout": "packed", "lambda": 0.5}})
    with pytest.raises(ConfigError, match="ua_valid column.*train.views=user_assistant.*tokenize"):
        check_rows(old, cfg)
    invalid = [make_row(8, 0, 0, False)]
    with pytest.raises(ConfigError, match="user/assistant pairs.*truncated_in_assistant"):
        check_rows(invalid, cfg)
    assert check_rows(invalid, Config())["jepa_valid"] == 1, "the steps pair counts its own column"
