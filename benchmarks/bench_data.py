"""Wall time of `prepare` + `tokenize` over all of GSM8K (8,792 records), and the ratio to a
per-token decode loop like the reference implementation's (measured on a sample in the
same run and scaled to the full set).

    GSM8K_DIR=../shared/data/gsm8k python benchmarks/bench_data.py [--model models/tiny]

Needs the embedded model (`dvc repro build_model`) or any fast tokenizer with a chat template.
"""

import argparse
import os
import time
from pathlib import Path

from stepjepa.config import DataConfig, TokenizeConfig
from stepjepa.data.prepare import prepare_file
from stepjepa.data.sources import SPLITS
from stepjepa.data.tokenization import encode_records, load_tokenizer


def reference_style_boundaries(tokenizer, record, date_string):
    """What the reference did: decode every token in a Python loop to find text boundaries."""
    ids = tokenizer.apply_chat_template(record["messages"], tokenize=True, date_string=date_string)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    text, starts = "", []
    for tid in ids:
        starts.append(len(text))
        text += tokenizer.decode([tid])
    return starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tiny")
    parser.add_argument("--sample", type=int, default=300, help="records for the per-token loop")
    args = parser.parse_args()
    raw = Path(os.environ.get("GSM8K_DIR", "../shared/data/gsm8k"))
    tokenizer = load_tokenizer(args.model)
    data_cfg, tok_cfg = DataConfig(), TokenizeConfig()

    t0 = time.perf_counter()
    prepared = {s: prepare_file(raw / f"{s}.jsonl", s, data_cfg)[0] for s in SPLITS}
    t1 = time.perf_counter()
    tables = {s: encode_records(tokenizer, prepared[s], tok_cfg.max_length, tok_cfg.date_string) for s in SPLITS}
    t2 = time.perf_counter()
    n = sum(len(v) for v in prepared.values())
    tokens = sum(sum(t.column("num_tokens").to_pylist()) for t in tables.values())

    sample = prepared["train"][: args.sample]
    t3 = time.perf_counter()
    for record in sample:
        reference_style_boundaries(tokenizer, record, tok_cfg.date_string)
    per_record_loop = (time.perf_counter() - t3) / len(sample)

    print(f"records: {n}  tokens: {tokens}  cpus: {os.cpu_count()}")
    print(f"prepare:  {t1 - t0:7.2f} s")
    print(f"tokenize: {t2 - t1:7.2f} s  ({tokens / (t2 - t1):,.0f} tokens/s)")
    print(f"total:    {t2 - t0:7.2f} s  (target <= 10 s)")
    print(
        f"per-token decode loop (reference style), {len(sample)} records scaled to {n}: "
        f"{per_record_loop * n:7.2f} s  -> ratio {per_record_loop * n / (t2 - t1):.1f}x slower than tokenize"
    )


if __name__ == "__main__":
    main()
