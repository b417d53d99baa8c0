"""Training data for one run: read tokenised rows, check them against the config, and
plan every optimizer step's micro-batches up front.

The plan is a pure function of the row lengths, the seed and the batch settings, so a
resumed run rebuilds exactly the same order and skips the steps it has done: it
finishes with the same number of optimizer steps as an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from stepjepa.config import Config, ConfigError
from stepjepa.inputs import parquet_file
from stepjepa.method.collate import length_grouped_batches
from stepjepa.method.masks import laid_out_lengths
from stepjepa.vocabulary import PAIR_COLUMNS, ROW_COLUMNS

log = logging.getLogger(__name__)

# The user/assistant pair's columns (train.views: user_assistant); data tokenised before
# they existed still trains the steps pair.
UA_COLUMNS = ("user_span", "assistant_span", "ua_valid", "ua_invalid_reason")
Plan = list[list[list[int]]]
"""plan[step] = the micro-batches (lists of row indices) of that optimizer step on this process."""


def load_rows(path: str | Path, max_examples: int | None = None) -> list[dict[str, Any]]:
    """Rows of a tokenised parquet file (docs/data-format.md), the first `max_examples` only;
    a path that holds no such rows is an `InputError` naming it (`stepjepa.inputs.parquet_file`)."""
    file = parquet_file(path, ROW_COLUMNS)
    extra = [c for c in ("invalid_reason", *UA_COLUMNS) if c in file.schema_arrow.names]
    table = file.read(columns=[*ROW_COLUMNS, *extra])
    if max_examples is not None:
        table = table.slice(0, max_examples)
    return table.to_pylist()


def check_rows(rows: list[dict[str, Any]], cfg: Config) -> dict[str, int]:
    """Fail before training on data that cannot serve this config; returns counts to log.

    No rows at all; or lambda > 0 but no row has a JEPA pair, so the objective would
    silently be SFT. The usual cause is truncation inside Step 2, hence the message
    names tokenize.max_length.
    """
    if not rows:
        raise ConfigError("--data: no rows to train on (check train.max_examples)")
    valid_key = PAIR_COLUMNS[cfg.train.views][2]
    if valid_key not in rows[0]:
        raise ConfigError(
            f"--data: no {valid_key} column, which train.views={cfg.train.views} needs: the data "
            "was tokenised by an older version; rerun the tokenize stage"
        )
    valid = sum(bool(r[valid_key]) for r in rows)
    if cfg.train.lambda_ > 0 and valid == 0 and valid_key == "ua_valid":
        reasons = Counter(r.get("ua_invalid_reason") for r in rows)
        raise ConfigError(
            f"train.views=user_assistant with train.lambda={cfg.train.lambda_} needs user/assistant "
            f"pairs but none of the {len(rows)} rows has one (reasons: {dict(reasons)})"
        )
    if cfg.train.lambda_ > 0 and valid == 0:
        reasons = Counter(r.get("invalid_reason") for r in rows)
        raise ConfigError(
            f"train.lambda={cfg.train.lambda_} needs Step-1/Step-2 pairs but none of the {len(rows)} rows has one "
            f"(reasons: {dict(reasons)}); if they were truncated_in_step2, raise tokenize.max_length "
            f"(now {cfg.tokenize.max_length}) and re-tokenise, or set train.lambda=0"
        )
    longest = max(len(r["input_ids"]) for r in rows)
    if longest > cfg.tokenize.max_length:
        log.warning(
            "rows up to %d tokens exceed tokenize.max_length=%d: data tokenised with other params?",
            longest,
            cfg.tokenize.max_length,
        )
    return {"rows": len(rows), "jepa_valid": valid, "max_tokens": longest}


def check_vocab(rows: list[dict[str, Any]], vocab_size: int, predictor_ids: list[int]) -> None:
    """Token ids must be in the model's vocabulary and never a predictor token: otherwise
    the data was tokenised for another model (docs/data-format.md: `input_ids`)."""
    ids = np.concatenate([np.asarray(r["input_ids"], dtype=np.int64) for r in rows])
    if ids.min() < 0 or ids.max() >= vocab_size or np.isin(ids, predictor_ids).any():
        raise ConfigError(
            f"--data: token ids outside [0, {vocab_size}) or equal to a predictor token: the data was "
            "tokenised for another model than model.name_or_path; rerun the tokenize stage"
        )


def laid_out_length(row: dict[str, Any], k: int, layout: str, views: str = "steps") -> int:
    """Length of one row after layout (`stepjepa.method.masks.laid_out_lengths`)."""
    first, second, valid = PAIR_COLUMNS[views]
    ok = bool(row[valid])
    s1_end, s2_end = (int(row[first][1]), int(row[second][1])) if ok else (0, 0)
    return int(laid_out_lengths(layout, len(row["input_ids"]), s1_end, s2_end, k, ok))


def step_plan(
    lengths: list[int],
    *,
    batch_size: int,
    grad_accum_steps: int,
    epochs: int,
    max_steps: int | None,
    seed: int,
    num_processes: int = 1,
    process_index: int = 0,
) -> Plan:
    """Every optimizer step's micro-batches for this process (see `Plan`).

    Each step takes `grad_accum_steps * num_processes` length-grouped micro-batches;
    process p takes every `num_processes`-th one from p, so processes see disjoint data.
    Epoch e shuffles with seed + e. A short last group of an epoch is kept when it holds
    at least one micro-batch per process (trimmed to a multiple of them), else dropped:
    every process must take part in every step (DDP all-reduces gradients).
    """
    per_step = grad_accum_steps * num_processes
    plan: Plan = []
    for epoch in range(epochs):
        batches = length_grouped_batches(lengths, batch_size, seed + epoch)
        for group in (batches[i : i + per_step] for i in range(0, len(batches), per_step)):
            usable = len(group) - len(group) % num_processes
            if usable == 0:
                log.info(
                    "epoch %d: dropping a last step of %d micro-batches (< %d processes)",
                    epoch,
                    len(group),
                    num_processes,
                )
                continue
            plan.append(group[:usable][process_index::num_processes])
    return plan[:max_steps] if max_steps is not None else plan
