"""DVC stage `tokenize`: chat template, tokens, labels and step spans of every conversation.

    python -m pipelines.tokenize_data --params params.yaml --prepared data/prepared \
        --out data/tokenized --metrics metrics/tokenize.json
"""

import logging

import pyarrow.parquet as pq

from pipelines._io import run_stage, stage_args, write_json
from stepjepa.config import load_config
from stepjepa.data.prepare import PREPARED_SPLITS
from stepjepa.data.tokenization import TokenizationError, encode_records, load_tokenizer, max_length_warning, summarize
from stepjepa.inputs import read_records


def main() -> None:
    args = stage_args(__doc__, "prepared")
    cfg = load_config(args.params)
    try:
        tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    except OSError as err:  # transformers' message may not say which model it failed to find
        raise TokenizationError(
            f"{args.params}: model.name_or_path={cfg.model.name_or_path}: cannot load its tokenizer ({err})"
        ) from None
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split in PREPARED_SPLITS:
        path = args.prepared / f"{split}.jsonl"
        records = read_records(path)
        try:
            table = encode_records(tokenizer, records, cfg.tokenize.max_length, cfg.tokenize.date_string)
        except TokenizationError as err:  # its message names the record and field, not the file
            raise TokenizationError(f"{path}: {err}") from None
        pq.write_table(table, args.out / f"{split}.parquet")
        metrics[split] = summarize(table)
        if warning := max_length_warning(metrics[split], cfg.tokenize.max_length):
            logging.getLogger("tokenize").warning("%s: %s", path, warning)
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    raise SystemExit(run_stage("tokenize", main))
