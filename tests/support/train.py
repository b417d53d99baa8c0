"""Helpers for the training tests: tokenised rows of the tiny model and params files.

Rows are tokenised here with `stepjepa.data.tokenization` (the same code the DVC stage runs),
so the training tests do not depend on `dvc repro`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from stepjepa.config import Config, config_from_dict
from stepjepa.data.tokenization import encode_records, load_tokenizer

# Small and quick: a tiny model learns visibly in a few dozen steps at this rate.
FAST_TRAIN = {
    "learning_rate": 3e-3,
    "warmup_steps": 2,
    "batch_size": 8,
    "log_every": 2,
    "checkpoint_every": None,
    "tracking": "none",
    "log_model": False,
}


def write_tokenized(model_dir: Path, conversations: list[dict], path: Path, max_length: int = 512) -> Path:
    """Tokenise `conversations` for the model in `model_dir` and write them as parquet."""
    tokenizer = load_tokenizer(str(model_dir))
    pq.write_table(encode_records(tokenizer, conversations, max_length, "26 Jul 2024"), path)
    return path


def params_tree(model_dir: Path, **train: Any) -> dict:
    """A params tree for the tiny model with FAST_TRAIN, overridden by `train`."""
    return {"model": {"name_or_path": str(model_dir)}, "train": FAST_TRAIN | train}


def make_config(model_dir: Path, **train: Any) -> Config:
    return config_from_dict(params_tree(model_dir, **train))


def write_params(path: Path, model_dir: Path, **train: Any) -> Path:
    path.write_text(yaml.safe_dump(params_tree(model_dir, **train)))
    return path


def write_checkable_rows(path: Path) -> Path:
    """One tokenised row in a Parquet file: what `stepjepa train`'s checks before its imports
    (stepjepa/training/preflight.py) accept, for tests of what is refused after them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {
        "input_ids": [[1, 2]],
        "labels": [[-100, 2]],
        "step1_span": [None],
        "step2_span": [None],
        "jepa_valid": [False],
    }
    pq.write_table(pa.table(rows), path)
    return path
