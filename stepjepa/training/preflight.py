"""What `stepjepa train` checks before it imports torch, transformers and MLflow (~5 CPU-s).

A wrong `--data`, a model that is not there, or a K past the model's positions is one line
in a fraction of a second, not after the imports. Each check is the one training runs
itself later (`stepjepa.inputs.parquet_file`, `stepjepa.model_location.missing_model`,
`stepjepa.method.positions.check_positions`), on what can be read without loading anything:
the Parquet footer and columns, the file system and the HF cache, the model's config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from stepjepa.config import Config
from stepjepa.inputs import parquet_file
from stepjepa.method.positions import check_positions, table_lengths
from stepjepa.model_location import missing_model, model_file, not_loadable
from stepjepa.vocabulary import ROW_COLUMNS


def check_run_inputs(cfg: Config, data: str | Path) -> None:
    """Raise `InputError` or `ConfigError`, naming the argument or param, for what training
    would refuse once loaded."""
    rows = parquet_file(data, ROW_COLUMNS)
    if reason := missing_model(cfg.model.name_or_path, cfg.model.revision):
        raise not_loadable(cfg.model, reason)
    if (positions := configured_positions(cfg)) is not None:
        columns = [c for c in ("input_ids", "jepa_valid", "ua_valid") if c in rows.schema_arrow.names]
        table = rows.read(columns=columns)
        if cfg.train.max_examples is not None:  # the rows training reads (`load_rows`)
            table = table.slice(0, cfg.train.max_examples)
        check_positions(*table_lengths(table), cfg.train.k, positions)


def configured_positions(cfg: Config) -> int | None:
    """`max_position_embeddings` from the model's config.json where it is at hand and plain;
    None leaves the check to training, on the loaded model: a hub id while the hub is on,
    remote code (its config class may compute the value), a key under another name."""
    if cfg.model.trust_remote_code:
        return None
    path = model_file(cfg.model.name_or_path, "config.json", cfg.model.revision)
    try:
        value = json.loads(path.read_text()).get("max_position_embeddings") if path else None
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object: transformers says
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
