"""DVC stage `build_model`: the embedded default model (tokenizer trained on GSM8K train).

    python -m pipelines.build_model --params params.yaml --prepared data/prepared/train.jsonl \
        --out models/tiny --metrics metrics/build_model.json
"""

import argparse
import json
from pathlib import Path

from pipelines._io import write_json
from stepjepa.config import load_config
from stepjepa.tiny_model import build_tiny_model, model_summary, tokenizer_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    cfg = load_config(args.params)
    with args.prepared.open(encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh]
    build_tiny_model(cfg.tiny_model, tokenizer_corpus(records), args.out)
    write_json(model_summary(args.out), args.metrics)


if __name__ == "__main__":
    main()
