"""DVC stage `tokenize`: chat template, tokens, labels and step spans of every conversation.

    python -m pipelines.tokenize_data --params params.yaml --prepared data/prepared \
        --out data/tokenized --metrics metrics/tokenize.json
"""

import argparse
import json
from pathlib import Path

import pyarrow.parquet as pq

from pipelines._io import write_json
from stepjepa.config import load_config
from stepjepa.sources import SPLITS
from stepjepa.tokenization import encode_records, load_tokenizer, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    cfg = load_config(args.params)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.revision, cfg.model.trust_remote_code)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for split in SPLITS:
        with (args.prepared / f"{split}.jsonl").open(encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh]
        table = encode_records(tokenizer, records, cfg.tokenize.max_length, cfg.tokenize.date_string)
        pq.write_table(table, args.out / f"{split}.parquet")
        metrics[split] = summarize(table)
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    main()
