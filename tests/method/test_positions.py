"""`stepjepa.method.positions`: K predictors count only in rows with a view pair, the same
whether the rows are in memory (training) or read as Parquet columns (`stepjepa train`'s check)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from stepjepa.config import ConfigError
from stepjepa.method.positions import check_positions, row_lengths, table_lengths

ROWS = [
    {"input_ids": [1, 2, 3, 4], "jepa_valid": False, "ua_valid": None},  # no pair: 4 positions
    {"input_ids": [1, 2], "jepa_valid": None, "ua_valid": True},  # user/assistant pair: 2 + K
    {"input_ids": [1], "jepa_valid": True, "ua_valid": False},  # steps pair: 1 + K
]


def test_table_columns_give_the_lengths_rows_give():
    table = pa.Table.from_pylist(ROWS)
    assert table_lengths(table) == row_lengths(ROWS) == ([4, 2, 1], [False, True, True])
    old = table.drop_columns(["ua_valid"])  # tokenised before the user/assistant pair existed
    assert table_lengths(old) == row_lengths([{k: v for k, v in r.items() if k != "ua_valid"} for r in ROWS])


def test_k_counts_only_where_a_row_has_a_pair():
    check_positions(*row_lengths(ROWS), k=2, max_positions=4)  # 4, 2 + 2, 1 + 2
    check_positions(*row_lengths(ROWS), k=9, max_positions=None)  # the model has no limit
    with pytest.raises(ConfigError, match=r"train.k=3: rows need up to 5 positions .* max_position_embeddings=4"):
        check_positions(*row_lengths(ROWS), k=3, max_positions=4)
