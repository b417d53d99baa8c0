"""Turn tokenised rows into one laid-out, padded training batch (docs/step-jepa.md 3, 5).

`collate` is the one code path from rows (docs/data-format.md) to the tensors a training
step consumes; `Collator` binds its settings once per run, and training, the held-out
probe, the benchmarks and `stepjepa inspect` all call it. It is vectorised over the batch: the only
Python loop runs over examples to stack them, never over tokens. Each laid-out position
is described by a *source index* into the original row (or a predictor slot), and ids,
labels, targets and positions are all gathered through that one map.

Padding is dynamic (to the longest row of the batch, optionally rounded up to a multiple
of 8 for tensor cores); `length_grouped_batches` keeps that padding small.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from stepjepa.method.flex_masks import attention_spans
from stepjepa.method.masks import (
    causal_mask,
    check_k,
    check_layout,
    inline_lengths,
    laid_out_lengths,
    layout_mask,
    packed_lengths,
)
from stepjepa.vocabulary import IGNORE_INDEX, PAIR_COLUMNS, Layout, Views, check_layout_fits_views

# How a batch carries its attention masks: dense `(B, 1, T, T)` bool (sdpa, eager) or the
# `(B, 7)` span tables FlexAttention builds its block mask from (stepjepa.method.flex_masks).
Attention = Literal["dense", "spans"]
ATTENTION: tuple[str, ...] = ("dense", "spans")


def check_views(views: str, layout: str) -> None:
    """Raise a ValueError naming the view pair unless it is known and fits the layout."""
    if views not in PAIR_COLUMNS:
        raise ValueError(f"views must be one of {', '.join(PAIR_COLUMNS)}; got {views!r}")
    check_layout_fits_views(layout, views)


def check_attention(attention: str) -> None:
    """Raise a ValueError naming `attention` unless it is one of ATTENTION."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}; got {attention!r}")


def _round_up(value: int, multiple: int | None) -> int:
    return value if not multiple else -(-value // multiple) * multiple


def _stack(examples: Sequence[Mapping[str, Any]], pad_id: int, views: Views = "steps") -> dict[str, Tensor]:
    """Right-pad the ragged rows; `(B, N)` ids/labels and `(B,)` n, s1_end, s2_end, valid
    (s1_end, s2_end: the ends of the view pair's first and second span)."""
    if not examples:
        raise ValueError("collate needs at least one example")
    ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
    labels = [torch.as_tensor(e["labels"], dtype=torch.long) for e in examples]
    n = torch.tensor([len(x) for x in ids])
    if any(len(a) != len(b) for a, b in zip(ids, labels)) or bool((n == 0).any()):
        raise ValueError("every example needs non-empty input_ids and labels of equal length")
    first, second, valid_key = PAIR_COLUMNS[views]
    if valid_key not in examples[0]:
        raise ValueError(f"views={views} needs the columns {first}, {second}, {valid_key}: re-tokenise the data")
    valid = torch.tensor([bool(e[valid_key]) for e in examples])
    # Invalid rows may have null spans; 0 is never read for them (K and the copy are 0).
    s1 = torch.tensor([int(e[first][1]) if v else 0 for e, v in zip(examples, valid)])
    s2 = torch.tensor([int(e[second][1]) if v else 0 for e, v in zip(examples, valid)])
    bad = valid & ~((s1 >= 0) & (s1 < s2) & (s2 < n))
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"{valid_key} examples {rows} need 0 <= s1_end < s2_end < len(input_ids) (the ends of {first} and {second})"
        )
    pad = torch.nn.utils.rnn.pad_sequence
    return {
        "ids": pad(ids, batch_first=True, padding_value=pad_id),
        "labels": pad(labels, batch_first=True, padding_value=IGNORE_INDEX),
        "n": n,
        "s1": s1,
        "s2": s2,
        "valid": valid,
    }


def _source_map(layout: Layout, rows: dict[str, Tensor], k: int, total_len: int) -> dict[str, Tensor]:
    """Per laid-out position `(B, T)`: source index, predictor slot (-1 if none),
    whether it is real, carries LM labels, and its position id (docs/step-jepa.md sections 3, 5)."""
    n, s1, s2, valid = (rows[key].unsqueeze(1) for key in ("n", "s1", "s2", "valid"))
    pos = torch.arange(total_len).unsqueeze(0)
    kk = k * valid.long()
    if layout == "packed":
        length = packed_lengths(n, s1, s2, k, valid)
        copy_start = n + kk
        is_pred = (pos >= n) & (pos < copy_start)
        is_copy = (pos >= copy_start) & (pos < length)
        src = torch.where(is_copy, s1 + 1 + pos - copy_start, pos)
        slot = torch.where(is_pred, pos - n, -1)
        # Predictors continue after Step 1 and the copy keeps Step 2's inline positions,
        # so both see exactly what they see in the inline layout (views coincide).
        position = torch.where(is_pred, s1 + 1 + slot, torch.where(is_copy, src + kk, pos))
        labelled = pos < n
    else:
        length = inline_lengths(n, k, valid)
        is_pred = (pos > s1) & (pos <= s1 + kk)
        src = torch.where(pos > s1 + kk, pos - kk, pos)
        slot = torch.where(is_pred, pos - s1 - 1, -1)
        position = pos
        labelled = ~is_pred
    real = pos < length
    return {
        "src": torch.where(real & ~is_pred, src, 0),
        "slot": slot,
        "real": real,
        "labelled": real & labelled,
        "position": torch.where(real, position, 0),
        "length": length.squeeze(1),
    }


def _view_indices(layout: Layout, rows: dict[str, Tensor], k: int) -> tuple[Tensor, Tensor]:
    """`(B,)` view-1 and view-2 positions in the laid-out row; 0 for invalid examples."""
    n, s1, s2, valid = rows["n"], rows["s1"], rows["s2"], rows["valid"]
    if layout == "packed":
        view1 = (n + k - 1) if k else s1
        view2 = packed_lengths(n, s1, s2, k, valid) - 1
    else:
        view1, view2 = s1 + k, s2 + k
    zero = torch.zeros_like(n)
    return torch.where(valid, view1, zero), torch.where(valid, view2, zero)


def _plain_batch(rows: dict[str, Tensor], total_len: int, pad_id: int, attention: Attention) -> dict[str, Tensor]:
    """The plain causal LM batch (no predictors, no isolation): `lm_*` keys."""
    width = rows["ids"].shape[1]
    grow = total_len - width
    ids = torch.nn.functional.pad(rows["ids"], (0, grow), value=pad_id)
    labels = torch.nn.functional.pad(rows["labels"], (0, grow), value=IGNORE_INDEX)
    real = torch.arange(total_len).unsqueeze(0) < rows["n"].unsqueeze(1)
    return {
        "lm_input_ids": ids,
        "lm_labels": labels,
        "lm_position_ids": torch.where(real, torch.arange(total_len), 0),
        "lm_attention_mask": _mask(attention, "causal", rows, 0, total_len),
    }


def _mask(attention: Attention, layout: str, rows: dict[str, Tensor], k: int, total_len: int) -> Tensor:
    """The dense mask or the span table of `layout` (`causal` for the plain pass)."""
    n, s1, s2, valid = rows["n"], rows["s1"], rows["s2"], rows["valid"]
    if attention == "spans":
        return attention_spans(layout, n, s1, s2, k, valid, total_len)
    if layout == "causal":
        return causal_mask(n, total_len)
    return layout_mask(layout, n, s1, s2, k, valid, total_len)


def shift_targets(labels: Tensor) -> Tensor:
    """`(B, T)` labels -> `(B, T)` targets: position t is trained to predict labels[t+1]."""
    return torch.nn.functional.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def count_targets(examples: Sequence[Mapping[str, Any]]) -> int:
    """How many LM targets `collate` gives these rows (in every layout and in the plain
    pass): labels after the first that are not -100, since position t predicts labels[t+1]."""
    shifted = [list(e["labels"][1:]) for e in examples]
    return sum(len(labels) - labels.count(IGNORE_INDEX) for labels in shifted)  # list.count: C speed


def collate(
    examples: Sequence[Mapping[str, Any]],
    *,
    k: int,
    layout: Layout = "inline",
    predictor_ids: Sequence[int],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
    views: Views = "steps",
    attention: Attention = "dense",
) -> dict[str, Tensor]:
    """Lay out and pad a batch of tokenised rows for one Step-JEPA training step.

    Returns, with B examples, T the laid-out width and N the plain width:
      input_ids, labels, shift_labels, position_ids  `(B, T)` long (labels moved with their
        tokens, -100 on predictors, prompt, the packed copy and padding; shift_labels[t] is
        the target of position t: the label of the next *original* token, so Step 1's last
        token still predicts Step 2's first token and predictors predict nothing),
      attention_mask `(B, 1, T, T)` bool (True = may attend; see stepjepa.method.masks), or with
        `attention="spans"` the `(B, 7)` long span table of stepjepa.method.flex_masks (FlexAttention
        builds a block mask from it; no dense mask is built),
      lengths `(B,)` real laid-out tokens; view1_index, view2_index `(B,)` long (0 when
        invalid); jepa_valid `(B,)` bool,
      lm_input_ids, lm_labels, lm_position_ids `(B, N)`, lm_attention_mask `(B, 1, N, N)`:
        the plain causal batch (two_pass's LM pass, and any batch without JEPA); its mask is a
        span table too with `attention="spans"`.
    For `two_pass` the main keys are the inline JEPA pass. `views` picks the pair: Step 1 ->
    Step 2, or `user_assistant` (user turn -> assistant turn: the predictors follow the user
    turn, the assistant turn is the isolated block; jepa_valid is then the row's `ua_valid`).
    """
    check_k(k)
    check_layout(layout)
    check_views(views, layout)
    check_attention(attention)
    if len(predictor_ids) != k:
        raise ValueError(f"predictor_ids must hold k={k} ids; got {len(predictor_ids)}")
    if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
        raise ValueError(f"pad_to_multiple_of must be >= 1 or None; got {pad_to_multiple_of}")
    rows = _stack(examples, pad_id, views)
    n, s1, s2, valid = rows["n"], rows["s1"], rows["s2"], rows["valid"]
    laid_out = laid_out_lengths(layout, n, s1, s2, k, valid)
    total_len = _round_up(int(laid_out.max()), pad_to_multiple_of)
    geo = _source_map(layout, rows, k, total_len)
    table = torch.tensor([*predictor_ids, pad_id], dtype=torch.long)
    ids = torch.where(geo["slot"] >= 0, table[geo["slot"]], rows["ids"].gather(1, geo["src"]))
    labelled = geo["labelled"]
    labels = torch.where(labelled, rows["labels"].gather(1, geo["src"]), IGNORE_INDEX)
    targets = torch.where(labelled, shift_targets(rows["labels"]).gather(1, geo["src"]), IGNORE_INDEX)
    view1, view2 = _view_indices(layout, rows, k)
    batch = {
        "input_ids": torch.where(geo["real"], ids, pad_id),
        "labels": labels,
        "shift_labels": targets,
        "position_ids": geo["position"],
        "lengths": geo["length"],
        "attention_mask": _mask(attention, layout, rows, k, total_len),
        "view1_index": view1,
        "view2_index": view2,
        "jepa_valid": valid,
    }
    plain_len = _round_up(int(n.max()), pad_to_multiple_of)
    return batch | _plain_batch(rows, plain_len, pad_id, attention)


@dataclass(frozen=True)
class Collator:
    """`collate` with its settings bound, built once per run and called on each batch's rows
    (torchtune's `partial(padded_collate, ...)`, TRL's collator dataclasses): training,
    the held-out probe, the benchmarks and `stepjepa inspect` all lay out rows through it.
    The settings are checked when it is built, not on the first batch."""

    k: int
    layout: Layout
    predictor_ids: tuple[int, ...]
    pad_id: int
    views: Views = "steps"
    pad_to_multiple_of: int | None = None
    attention: Attention = "dense"
    """`spans` for FlexAttention (`attention_for(attn_implementation)`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "predictor_ids", tuple(int(i) for i in self.predictor_ids))
        check_k(self.k)
        check_layout(self.layout)
        check_views(self.views, self.layout)
        check_attention(self.attention)
        if len(self.predictor_ids) != self.k:
            raise ValueError(f"predictor_ids must hold k={self.k} ids; got {len(self.predictor_ids)}")

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Tensor]:
        return collate(
            examples,
            k=self.k,
            layout=self.layout,
            predictor_ids=self.predictor_ids,
            pad_id=self.pad_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
            views=self.views,
            attention=self.attention,
        )


def attention_for(attn_implementation: str) -> Attention:
    """How batches for a model with `attn_implementation` carry their masks."""
    return "spans" if attn_implementation == "flex_attention" else "dense"


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, *, group_factor: int = 50
) -> list[list[int]]:
    """Shuffled batches of indices whose rows have similar lengths (less padding).

    Indices are shuffled, cut into groups of `batch_size * group_factor`, each group is
    sorted by length (longest first) and cut into batches, and the batch order is
    shuffled. Every index appears once; the same seed gives the same batches.
    """
    if batch_size < 1 or group_factor < 1:
        raise ValueError(f"batch_size and group_factor must be >= 1; got {batch_size}, {group_factor}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * group_factor
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def padding_fraction(
    lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to_multiple_of: int | None = None
) -> float:
    """Fraction of padded positions when `batches` (lists of indices) are padded to their
    longest row: 1 - real tokens / (sum over batches of size * padded width)."""
    real = sum(lengths[i] for batch in batches for i in batch)
    total = sum(len(b) * _round_up(max(lengths[i] for i in b), pad_to_multiple_of) for b in batches if b)
    return 1.0 - real / total if total else 0.0
