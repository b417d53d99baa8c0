"""Cost of a Step-JEPA training step against plain SFT, side by side on the same batches.

Variants, all on the same model and the same length-grouped batches of GSM8K rows:
`sft` (K = 0, lambda = 0: the sweep's baseline), `inline`, `packed` and `two_pass`
(K = 2, lambda = 0.1, the Step-1 -> Step-2 pair), `ua_packed` and `ua_two_pass` (the same
with the original LLM-JEPA pair, user turn -> assistant turn, `train.views:
user_assistant`), plus `hf_causal` (the model's own forward with a 2D padding mask, for
reference). A step is collate + forward + backward (the optimizer update is the same
for every variant and left out). Variants are interleaved batch by batch, in rotating
order, so load from other processes hits them alike; ratios are medians of per-batch
ratios to `sft`. Also reported: the padding fraction of each layout with length grouping
over the whole file (target <= 5%) and without it, and peak memory per variant (CUDA:
max allocated; CPU: peak bytes of tensors saved for backward, i.e. activations).

    .venv/bin/python benchmarks/bench_step.py                       # models/tiny, data/tokenized/train.parquet
    .venv/bin/python benchmarks/bench_step.py --batches 30 --threads 2 --json out.json

Targets on a 2-core CPU with the embedded tiny model: inline <= 1.08x SFT, packed <= 1.25x.
Without the DVC outputs, a tiny model and tokenised rows are built from GSM8K
(GSM8K_DIR, else ../shared/data/gsm8k) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stepjepa.config import ModelConfig
from stepjepa.method.batching import laid_out_length, load_rows
from stepjepa.method.collate import Collator, attention_for, length_grouped_batches, padding_fraction
from stepjepa.method.forward import step_jepa_forward
from stepjepa.model.modeling import add_predictor_tokens, load_model, load_tokenizer
from stepjepa.vocabulary import pad_id

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (layout, k, lambda, view pair)
    "sft": ("inline", 0, 0.0, "steps"),
    "inline": ("inline", 2, 0.1, "steps"),
    "packed": ("packed", 2, 0.1, "steps"),
    "two_pass": ("two_pass", 2, 0.1, "steps"),
    "ua_packed": ("packed", 2, 0.1, "user_assistant"),
    "ua_two_pass": ("two_pass", 2, 0.1, "user_assistant"),
}
TARGETS = {"inline": 1.08, "packed": 1.25}


def gsm8k_records(limit: int) -> list[dict]:
    """The first `limit` raw GSM8K training records as prepared conversations (id, messages, steps)."""
    from stepjepa.config import DataConfig
    from stepjepa.data.prepare import to_conversation
    from stepjepa.data.steps import split_record

    raw = Path(os.environ.get("GSM8K_DIR", ROOT.parent / "shared/data/gsm8k")) / "train.jsonl"
    if not raw.is_file():
        raise SystemExit("no data/tokenized/train.parquet and no GSM8K: run `dvc repro` or set GSM8K_DIR")
    lines = raw.read_text().splitlines()[:limit]
    return [
        {"id": f"train-{i + 1:06d}"} | to_conversation(split_record(json.loads(line)), DataConfig())
        for i, line in enumerate(lines)
    ]


def build_inputs(scratch: Path, limit: int) -> tuple[Path, Path]:
    """A tiny model and tokenised rows from raw GSM8K, when the DVC outputs are absent."""
    import pyarrow.parquet as pq

    from stepjepa.config import TinyModelConfig
    from stepjepa.data.tokenization import encode_records
    from stepjepa.model.tiny_model import build_tiny_model, tokenizer_corpus

    records = gsm8k_records(limit)
    model_dir = build_tiny_model(TinyModelConfig(), tokenizer_corpus(records), scratch / "tiny")
    table = encode_records(load_tokenizer(ModelConfig(name_or_path=str(model_dir))), records, 512, "26 Jul 2024")
    pq.write_table(table, scratch / "train.parquet")
    return model_dir, scratch / "train.parquet"


def padding_report(rows: list[dict], batch_size: int, seed: int) -> dict[str, dict[str, float]]:
    """Padding fraction per layout, with length grouping (the trainer's batches) and without."""
    report = {}
    for name, (layout, k, _, views) in VARIANTS.items():
        lengths = [laid_out_length(r, k, layout, views) for r in rows]
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        shuffled = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        report[name] = {
            "grouped": padding_fraction(lengths, length_grouped_batches(lengths, batch_size, seed)),
            "random": padding_fraction(lengths, shuffled),
        }
    return report


def hf_step(model, examples: list[dict], pad: int) -> torch.Tensor:
    """Reference: the model's own forward on a right-padded batch with a 2D mask."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad)
    labels = torch.full((len(examples), width), -100)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return model(
        input_ids=ids.to(model.device),
        attention_mask=mask.to(model.device),
        labels=labels.to(model.device),
        use_cache=False,
    ).loss


def one_step(model, examples: list[dict], variant: str, predictor_ids: list[int], pad: int) -> None:
    """Collate, forward and backward of one batch under `variant`; gradients are dropped."""
    if variant == "hf_causal":
        loss = hf_step(model, examples, pad)
    else:
        layout, k, lam, views = VARIANTS[variant]
        batch = Collator(
            k=k,
            layout=layout,
            predictor_ids=predictor_ids[:k],
            pad_id=pad,
            views=views,
            attention=attention_for(model.config._attn_implementation),
        )(examples)
        batch = {key: value.to(model.device) for key, value in batch.items()}
        loss = step_jepa_forward(model, batch, layout=layout, lam=lam).loss
    loss.backward()
    model.zero_grad(set_to_none=True)


def timed_steps(model, rows, batches, variants, predictor_ids, pad, warmup: int) -> dict[str, list[float]]:
    """Seconds per step for every variant on every batch, interleaved in rotating order."""
    times: dict[str, list[float]] = {v: [] for v in variants}
    for b, indices in enumerate(batches):
        examples = [rows[i] for i in indices]
        shift = b % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            one_step(model, examples, variant, predictor_ids, pad)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            if b >= warmup:
                times[variant].append(time.perf_counter() - start)
    return times


def peak_memory(model, rows, batches, variant, predictor_ids, pad) -> float:
    """Peak MB of a step: CUDA max allocated, else bytes saved for backward (activations)."""
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        for indices in batches:
            one_step(model, [rows[i] for i in indices], variant, predictor_ids, pad)
        return torch.cuda.max_memory_allocated() / 2**20
    peak = 0
    for indices in batches:
        storages: dict[int, int] = {}

        def keep(tensor: torch.Tensor, storages: dict[int, int] = storages) -> torch.Tensor:
            storage = tensor.untyped_storage()  # views share storage: count each once
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            one_step(model, [rows[i] for i in indices], variant, predictor_ids, pad)
        peak = max(peak, sum(storages.values()))
    return peak / 2**20


def load_inputs(model_dir: Path, data: Path) -> tuple[Path, list[dict], torch.nn.Module, object]:
    """Model, tokenizer and rows; built from raw GSM8K in a scratch folder when absent."""
    with tempfile.TemporaryDirectory() as scratch:
        if not (model_dir / "config.json").is_file() or not data.is_file():
            model_dir, data = build_inputs(Path(scratch), limit=2000)
        cfg = ModelConfig(name_or_path=str(model_dir))
        return model_dir, load_rows(data), load_model(cfg), load_tokenizer(cfg)


def measure(model, tokenizer, rows: list[dict], args: argparse.Namespace) -> dict:
    """Step times, ratios to SFT, peak memory and padding of every variant."""
    predictor_ids = add_predictor_tokens(model, tokenizer, 2)
    pad = pad_id(tokenizer)
    plain = [len(r["input_ids"]) for r in rows]
    batches = random.Random(args.seed).sample(
        length_grouped_batches(plain, args.batch_size, args.seed), args.batches + args.warmup
    )
    variants = [*VARIANTS, "hf_causal"]
    times = timed_steps(model, rows, batches, variants, predictor_ids, pad, args.warmup)
    return {
        "tokens_per_batch": statistics.mean(sum(plain[i] for i in b) for b in batches),
        "median_step_ms": {v: round(1000 * statistics.median(t), 2) for v, t in times.items()},
        "ratio_to_sft": {
            v: round(statistics.median(a / s for a, s in zip(t, times["sft"])), 3) for v, t in times.items()
        },
        "peak_memory_mb": {
            v: round(peak_memory(model, rows, batches[args.warmup :], v, predictor_ids, pad), 1) for v in variants
        },
        "padding_fraction": padding_report(rows, args.batch_size, args.seed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models/tiny")
    parser.add_argument("--data", type=Path, default=ROOT / "data/tokenized/train.parquet")
    parser.add_argument("--batches", type=int, default=20, help="timed batches per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1: stable timings on a shared machine)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model_dir, rows, model, tokenizer = load_inputs(args.model, args.data)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    result = {
        "model": str(model_dir),
        "device": device,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "timed_batches": args.batches,
    } | measure(model, tokenizer, rows, args)
    result["targets_met"] = {v: result["ratio_to_sft"][v] <= t for v, t in TARGETS.items()} | {
        "padding_grouped_<=5%": all(p["grouped"] <= 0.05 for p in result["padding_fraction"].values())
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
