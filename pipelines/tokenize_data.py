"""DVC stage `tokenize`: chat template, tokens, labels and step spans of every conversation.

    python -m pipelines.tokenize_data --params params.yaml --prepared data/prepared \
        --out data/tokenized --metrics metrics/tokenize.json
"""

import logging
from pathlib import Path

import pyarrow.parquet as pq

from pipelines._io import run_stage, stage_args, write_json
from stepjepa import startup
from stepjepa.config import ModelConfig, load_config
from stepjepa.data.prepare import PREPARED_SPLITS
from stepjepa.data.tokenization import (
    TokenizationError,
    check_records,
    encode_records,
    load_tokenizer,
    max_length_warning,
    summarize,
)
from stepjepa.inputs import read_records
from stepjepa.model_location import missing_model


def cannot_load(params: Path, cfg: ModelConfig, reason: object) -> TokenizationError:
    return TokenizationError(f"{params}: model.name_or_path={cfg.name_or_path}: cannot load its tokenizer ({reason})")


def read_split(path: Path) -> list[dict]:
    """The prepared records of one split, each checked (`check_records`); errors name the file."""
    records = read_records(path)
    try:
        check_records(records)
    except TokenizationError as err:  # its message names the record and field, not the file
        raise TokenizationError(f"{path}: {err}") from None
    return records


def main() -> None:
    args = stage_args(__doc__, "prepared")
    cfg = load_config(args.params)
    # What needs no transformers (seconds of CPU to import) is checked first: whether the
    # model is there (a folder, or a hub id in the cache offline), then every record.
    if reason := missing_model(cfg.model.name_or_path, cfg.model.revision):
        raise cannot_load(args.params, cfg.model, reason)
    splits = {split: args.prepared / f"{split}.jsonl" for split in PREPARED_SPLITS}
    records = {split: read_split(path) for split, path in splits.items()}
    try:
        tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    except OSError as err:  # transformers' message may not say which model it failed to find
        raise cannot_load(args.params, cfg.model, err) from None
    startup.resume()  # transformers is in: the cyclic collector back on (stepjepa/startup.py)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split, path in splits.items():
        try:
            table = encode_records(tokenizer, records[split], cfg.tokenize.max_length, cfg.tokenize.date_string)
        except TokenizationError as err:  # its message names the record and field, not the file
            raise TokenizationError(f"{path}: {err}") from None
        pq.write_table(table, args.out / f"{split}.parquet")
        metrics[split] = summarize(table)
        if warning := max_length_warning(metrics[split], cfg.tokenize.max_length):
            logging.getLogger("tokenize").warning("%s: %s", path, warning)
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    raise SystemExit(run_stage("tokenize", main))
