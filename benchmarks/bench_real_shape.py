"""Peak memory and step time at a real shape: our SFT and Step-JEPA against TRL's SFTTrainer.

A model built from Qwen2.5-0.5B's configuration (gpu_check.QWEN25_05B: 24 layers, hidden 896,
14 heads, 2 KV heads, intermediate 4,864, vocabulary 151,936; random weights, seeded, no hub)
trains a few AdamW steps in fp32 on the CPU on one batch of 4 GSM8K rows of typical length.
The rows are tokenised by the project's own pipeline with the embedded tiny tokenizer trained
on GSM8K (gpu_check.build_inputs; Qwen's tokenizer would need the hub), so every token id is
< 4,352 < 151,936: the token ids differ from Qwen's, the model's shape and so the LM head's
(rows x 151,936) logits do not. Variants:

  sft, jepa_inline, jepa_packed, jepa_two_pass   ours (stepjepa.training.loop.optimizer_step; K = 2,
                                                 lambda = 0.1), LM head chunked (the default
                                                 train.lm_loss_chunk)
  *_unchunked, sft_chunk1024                     the same with train.lm_loss_chunk null / 1024
  trl_sft                                        TRL's SFTTrainer, bench_trl.trl_trainer's
                                                 chat-data configuration (assistant_only_loss,
                                                 no packing, padding_free False); its token ids
                                                 and labels are checked equal to ours

Each variant runs in a fresh process of its own (peak RSS is per process): it builds the
model (the same saved weights for all), then resets the kernel's high-water mark
(/proc/self/clear_refs) and reports the peak RSS of the training steps, absolute and above
that post-build baseline, and the median step time after the warm-up step(s). Same for all:
fp32, no gradient checkpointing, `--threads` torch threads, AdamW at bench_trl.TRAIN's
settings (lr 1e-3, weight decay 0, clip 1.0), batch 4 of the same 4 rows every step.

    .venv/bin/python benchmarks/bench_real_shape.py --out benchmarks/results/real-shape.json
    .venv/bin/python benchmarks/bench_real_shape.py --variants sft trl_sft --steps 1 --warmup 0
    .venv/bin/python benchmarks/bench_real_shape.py --tiny          # a tiny Qwen2, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_trl  # noqa: E402
import gpu_check  # noqa: E402

from stepjepa.method.batching import load_rows  # noqa: E402

DEFAULT = "default"  # train.lm_loss_chunk as TrainConfig sets it (128 labelled positions)
OURS = {  # name: (layout, k, lambda, train.lm_loss_chunk)
    "sft": ("inline", 0, 0.0, DEFAULT),
    "jepa_inline": ("inline", 2, 0.1, DEFAULT),
    "jepa_packed": ("packed", 2, 0.1, DEFAULT),
    "jepa_two_pass": ("two_pass", 2, 0.1, DEFAULT),
    "sft_unchunked": ("inline", 0, 0.0, None),
    "jepa_inline_unchunked": ("inline", 2, 0.1, None),
    "sft_chunk1024": ("inline", 0, 0.0, 1024),
}
VARIANTS = (*OURS, "trl_sft")
# sft_chunk1024 (the default before this benchmark) is left out by default: batch 4 has ~420
# labelled positions, <= 1024, so it runs sft_unchunked's code (forward.lm_loss_sum).
DEFAULT_RUN = (
    "sft",
    "jepa_inline",
    "jepa_packed",
    "jepa_two_pass",
    "sft_unchunked",
    "jepa_inline_unchunked",
    "trl_sft",
)
BATCH = 4


def rss_mib(field: str) -> float:
    """VmRSS or VmHWM (the high-water mark) of this process, MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> float:
    """Reset this process's high-water mark to its current RSS (Linux >= 4.0); returns that RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mib("VmRSS")


def typical_rows(rows: list[dict], n: int = BATCH) -> list[int]:
    """`n` rows next to the median length among rows with a Step-1 -> Step-2 pair (so every
    JEPA variant scores n pairs); indices into `rows`."""
    valid = sorted((len(r["input_ids"]), i) for i, r in enumerate(rows) if r["jepa_valid"])
    middle = len(valid) // 2 - n // 2
    return [i for _, i in valid[middle : middle + n]]


def our_steps(model_dir: Path, rows: list[dict], variant: str, steps: int) -> tuple[list[float], float, dict]:
    """`steps` optimizer steps of ours on one batch of `rows`: step seconds, baseline RSS, facts."""
    from stepjepa.config import config_from_dict
    from stepjepa.method.collate import Collator
    from stepjepa.model.modeling import build_model
    from stepjepa.training.loop import StepModule, optimizer_step
    from stepjepa.training.optim import build_optimizer, build_scheduler
    from stepjepa.training.run import make_accelerator
    from stepjepa.vocabulary import pad_id

    layout, k, lam, chunk = OURS[variant]
    train = bench_trl.TRAIN | {
        "k": k,
        "lambda": lam,
        "layout": layout,
        "batch_size": BATCH,
        "max_steps": steps,
        "tracking": "none",
        "precision": "fp32",
    }
    if chunk != DEFAULT:
        train["lm_loss_chunk"] = chunk
    tc = config_from_dict({"model": {"name_or_path": str(model_dir)}, "train": train}).train
    accelerator = make_accelerator(tc)
    torch.manual_seed(tc.seed)
    model, tokenizer, predictor_ids = build_model(
        config_from_dict({"model": {"name_or_path": str(model_dir)}}).model, tc
    )
    collator = Collator(k=tc.k, layout=tc.layout, views=tc.views, predictor_ids=predictor_ids, pad_id=pad_id(tokenizer))
    step_module = accelerator.prepare_model(StepModule.from_config(model, tc))
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, steps)
    step_module.train()
    base = reset_peak()
    seconds, losses = [], []
    for step in range(1, steps + 1):
        started = time.perf_counter()
        metrics = optimizer_step(
            accelerator, step_module, optimizer, scheduler, [list(range(len(rows)))], rows, collator, tc, step
        )
        seconds.append(time.perf_counter() - started)
        losses.append(round(metrics["loss"], 4))
    return (
        seconds,
        base,
        {
            "lm_loss_chunk": tc.lm_loss_chunk,
            "losses": losses,
            "optimizer": "torch AdamW" + (" (fused)" if optimizer.defaults.get("fused") else " (for-loop)"),
        },
    )


def trl_steps(
    model_dir: Path, records: list[dict], rows: list[dict], steps: int, out: Path
) -> tuple[list[float], float, dict]:
    """`steps` steps of TRL's SFTTrainer on the same conversations: step seconds, baseline RSS, facts."""
    from transformers import TrainerCallback

    trainer = bench_trl.trl_trainer(model_dir, records, BATCH, out, max_steps=steps)
    data = trainer.train_dataset
    same = all(
        list(d["input_ids"]) == list(r["input_ids"]) and list(d["labels"]) == list(r["labels"])
        for d, r in zip(data, rows)
    )
    if not same or len(data) != len(rows):
        raise SystemExit("bench_real_shape: TRL's token ids or labels differ from ours; not the same rows")
    ends: list[float] = []

    class StepEnds(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if not ends:
                ends.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    trainer.add_callback(StepEnds())
    base = reset_peak()
    result = trainer.train()
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    return (
        seconds,
        base,
        {
            "ids_and_labels_equal_ours": same,
            "train_loss": round(result.training_loss, 4),
            "optimizer": f"{trainer.args.optim} (TRL's default)",
        },
    )


def child(variant: str, scratch: Path, steps: int, warmup: int, threads: int) -> dict:
    """One variant in this process: peak RSS of its training steps and its median step."""
    torch.set_num_threads(threads)
    rows = load_rows(scratch / "batch.parquet")
    started_rss = rss_mib("VmRSS")
    if variant == "trl_sft":
        records = [json.loads(line) for line in (scratch / "batch.jsonl").read_text().splitlines()]
        seconds, base, facts = trl_steps(scratch / "model", records, rows, steps, scratch / f"trl-{os.getpid()}")
    else:
        seconds, base, facts = our_steps(scratch / "model", rows, variant, steps)
    peak = rss_mib("VmHWM")
    timed = seconds[warmup:] or seconds
    return {
        "variant": variant,
        "peak_rss_mib": round(peak),
        "above_baseline_mib": round(peak - base),
        "baseline_rss_mib": round(base),
        "start_rss_mib": round(started_rss),
        "median_step_s": round(statistics.median(timed), 3),
        "step_s": [round(s, 3) for s in seconds],
        "threads": torch.get_num_threads(),
    } | facts


def prepare(scratch: Path, tiny: bool) -> dict:
    """The model folder and the 4 rows (scratch/batch.parquet and .jsonl); returns what they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scale = dataclasses.replace(gpu_check.CPU_SMOKE, shape=gpu_check.TINY if tiny else gpu_check.QWEN25_05B, rows=64)
    model_dir, records, rows = gpu_check.build_inputs(scale, scratch)
    assert len(rows) == len(records), "one tokenised row per conversation"
    chosen = typical_rows(rows)
    pq.write_table(pa.Table.from_pylist([rows[i] for i in chosen]), scratch / "batch.parquet")
    (scratch / "batch.jsonl").write_text("".join(json.dumps(records[i]) + "\n" for i in chosen))
    lengths = sorted(len(r["input_ids"]) for r in rows)
    return {
        "shape": scale.shape,
        "rows_pool": len(rows),
        "pool_median_tokens": lengths[len(lengths) // 2],
        "row_ids": [records[i]["id"] for i in chosen],
        "row_tokens": [len(rows[i]["input_ids"]) for i in chosen],
        "label_tokens": [sum(t != -100 for t in rows[i]["labels"]) for i in chosen],
        "max_token_id": max(max(rows[i]["input_ids"]) for i in chosen),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_RUN),
        choices=VARIANTS,
        metavar="VARIANT",
        help=f"which to run, in order, of {' '.join(VARIANTS)} (default: {' '.join(DEFAULT_RUN)})",
    )
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (warm-up included)")
    parser.add_argument("--warmup", type=int, default=1, help="steps left out of the median")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in every variant")
    parser.add_argument("--tiny", action="store_true", help="a tiny Qwen2 instead of the real shape (seconds)")
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.scratch, args.steps, args.warmup, args.threads)))
        return 0
    started, load = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="real-shape-") as tmp:
        facts = prepare(Path(tmp), args.tiny)
        print(json.dumps(facts), file=sys.stderr, flush=True)
        results = []
        for variant in args.variants:  # back to back, each in a fresh process
            command = [
                sys.executable,
                __file__,
                "--child",
                variant,
                "--scratch",
                tmp,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--threads",
                str(args.threads),
            ]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
            if done.returncode:
                raise SystemExit(f"bench_real_shape: {variant} failed:\n{done.stderr[-3000:]}")
            results.append(json.loads(done.stdout.splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    trl = next((r for r in results if r["variant"] == "trl_sft"), None)
    for r in results:
        if trl:
            r["memory_ratio_to_trl"] = round(r["peak_rss_mib"] / trl["peak_rss_mib"], 3)
            r["time_ratio_to_trl"] = round(r["median_step_s"] / trl["median_step_s"], 3)
    report = facts | {
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "load_before": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started),
        "variants": results,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
