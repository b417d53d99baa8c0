"""Whether the tokenised rows, with their K predictors, fit the model's position table.

Every layout gives a JEPA row positions 0 .. n + K - 1 (predictors continue after Step 1;
the packed copy keeps Step 2's inline positions). Past `max_position_embeddings`, RoPE
extrapolates and learned position tables index out of range: training would run on garbage
without an error. Nothing here imports torch: `stepjepa train` checks this from the Parquet
columns and the model's config.json before it loads either (`stepjepa.training.preflight`),
and training checks it again on the loaded model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stepjepa.config import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa


def check_positions(lengths: Sequence[int], paired: Sequence[bool], k: int, max_positions: int | None) -> None:
    """Fail when a row (`lengths[i]` tokens, `paired[i]`: it has a JEPA view pair) with its K
    predictors needs more position ids than the model has; None: the model says no limit."""
    if max_positions is None or not lengths:
        return
    # Either view pair puts K predictors into the row (conservative for the other pair).
    needed = max(n + (k if pair else 0) for n, pair in zip(lengths, paired, strict=True))
    if needed > max_positions:
        raise ConfigError(
            f"train.k={k}: rows need up to {needed} positions with their predictors, more than the model's "
            f"max_position_embeddings={max_positions}; lower train.k or tokenize.max_length, or pick a model "
            "with more positions"
        )


def row_lengths(rows: list[dict[str, Any]]) -> tuple[list[int], list[bool]]:
    """(tokens, has a view pair) of rows read by `stepjepa.method.batching.load_rows`."""
    return [len(r["input_ids"]) for r in rows], [bool(r["jepa_valid"] or r.get("ua_valid")) for r in rows]


def table_lengths(table: pa.Table) -> tuple[list[int], list[bool]]:
    """`row_lengths` from the columns of a tokenised table, without reading its token ids."""
    import pyarrow.compute as pc

    paired = table["jepa_valid"]
    if "ua_valid" in table.column_names:
        paired = pc.or_kleene(paired, table["ua_valid"])
    lengths = pc.list_value_length(table["input_ids"]).fill_null(0)
    return lengths.to_pylist(), [bool(v) for v in paired.fill_null(False).to_pylist()]
