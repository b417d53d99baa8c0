"""Training speed against TRL: `SFTTrainer` vs our SFT step vs Step-JEPA (inline and packed,
K = 2), one epoch of the same N GSM8K conversations each, in one process.

TRL gets the conversations as `messages` and tokenises them itself, with its documented
configuration for chat data: `assistant_only_loss=True` (which needs `{% generation %}`
markers: the tiny model's ChatML template with them, rendering the same text), dynamic
padding to the longest row of each batch, no packing, `padding_free=False`. Ours gets
the rows `stepjepa.data.tokenization` makes from the same conversations; the script checks
that TRL's token ids and labels equal ours, and that TRL's loss
and our SFT loss agree on the same batch with the same weights.

Same for every variant: model and initial weights, batch size, fp32, torch threads,
learning rate and schedule, no gradient checkpointing (TRL's SFTConfig turns it on by
default; it trades compute for memory, which a 2.4M-parameter model does not need).
Each variant keeps its own batch order: TRL its random sampler, ours length-grouped
batches (part of what is compared; the padding of both is reported). Printed per variant:
median optimizer step (steady state: the first `--warmup` steps left out; a step is the
time from one step's end to the next, data loading included), epoch seconds, real
(non-padding) tokens/s, padding share, and ratios to TRL (as documented, and with
transformers' `group_by_length` sampler, `trl_sft_grouped`, closer to our batches).
Target: Step-JEPA inline epoch <= TRL SFT epoch.

    .venv/bin/python benchmarks/bench_trl.py                        # models/tiny + data/prepared, else built
    .venv/bin/python benchmarks/bench_trl.py --examples 128 --rounds 2 --threads 1 --json out.json

Needs TRL: `pip install -e ".[bench]"` (`make bench` installs it). Without the DVC outputs
a tiny model is built from GSM8K (GSM8K_DIR, else ../shared/data/gsm8k) in a temp folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
from bench_step import gsm8k_records

from stepjepa.config import TinyModelConfig, config_from_dict
from stepjepa.data.tokenization import encode_records
from stepjepa.method.batching import laid_out_length, load_rows, step_plan
from stepjepa.method.collate import Collator
from stepjepa.method.forward import step_jepa_forward
from stepjepa.model.modeling import build_model, load_model, load_tokenizer
from stepjepa.model.tiny_model import build_tiny_model, tokenizer_corpus
from stepjepa.prompts import CHATML_TEMPLATE
from stepjepa.training.loop import StepModule, optimizer_step
from stepjepa.training.optim import build_optimizer, build_scheduler
from stepjepa.training.run import make_accelerator
from stepjepa.vocabulary import pad_id

ROOT = Path(__file__).resolve().parents[1]
OURS = {"sft": ("inline", 0, 0.0), "jepa_inline": ("inline", 2, 0.1), "jepa_packed": ("packed", 2, 0.1)}
# params.yaml's training settings, shared by every variant.
TRAIN = {
    "learning_rate": 1e-3,
    "warmup_ratio": 0.05,
    "scheduler": "cosine",
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "seed": 0,
}
# The tiny model's ChatML template with TRL's assistant markers around what the model must learn.
CHATML_MARKED = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{% generation %}{{- message['content'] + '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def load_inputs(examples: int, scratch: Path) -> tuple[Path, list[dict], list[dict]]:
    """Model folder, the first `examples` conversations, and our tokenised rows of them."""
    model_dir, prepared = ROOT / "models/tiny", ROOT / "data/prepared/train.jsonl"
    if (model_dir / "config.json").is_file() and prepared.is_file():
        with prepared.open() as fh:
            records = [json.loads(line) for _, line in zip(range(examples), fh)]
    else:
        corpus = gsm8k_records(max(examples, 2000))
        records = corpus[:examples]
        model_dir = build_tiny_model(TinyModelConfig(), tokenizer_corpus(corpus), scratch / "tiny")
    tokenizer = load_tokenizer(_config(model_dir, "sft", 8).model)
    if tokenizer.chat_template != CHATML_TEMPLATE:
        raise SystemExit(f"{model_dir}: not the tiny model's ChatML template; CHATML_MARKED would render differently")
    pq.write_table(encode_records(tokenizer, records, 512, "26 Jul 2024"), scratch / "rows.parquet")
    return model_dir, records, load_rows(scratch / "rows.parquet")


def _config(model_dir: Path, variant: str, batch_size: int, precision: str = "fp32"):
    layout, k, lam = OURS[variant]
    return config_from_dict(
        {
            "model": {"name_or_path": str(model_dir)},
            "train": TRAIN
            | {
                "k": k,
                "lambda": lam,
                "layout": layout,
                "batch_size": batch_size,
                "epochs": 1,
                "max_steps": None,
                "tracking": "none",
                "precision": precision,
            },
        }
    )


def our_epoch(model_dir: Path, rows: list[dict], variant: str, batch_size: int, precision: str = "fp32") -> dict:
    """One epoch of `stepjepa.training.loop.optimizer_step` (collate, forward, backward, clip, AdamW);
    `precision` bf16: autocast, as `train.precision: bf16` trains (gpu_check.py on CUDA)."""
    cfg = _config(model_dir, variant, batch_size, precision)
    tc = cfg.train
    accelerator = make_accelerator(tc)
    torch.manual_seed(tc.seed)
    model, tokenizer, predictor_ids = build_model(cfg.model, tc)
    plan = step_plan(
        [laid_out_length(r, tc.k, tc.layout, tc.views) for r in rows],
        batch_size=batch_size,
        grad_accum_steps=1,
        epochs=1,
        max_steps=None,
        seed=tc.seed,
    )
    collator = Collator(k=tc.k, layout=tc.layout, views=tc.views, predictor_ids=predictor_ids, pad_id=pad_id(tokenizer))
    step_module = accelerator.prepare_model(StepModule.from_config(model, tc))
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, len(plan))
    step_module.train()
    ends = [time.perf_counter()]
    for step, micro_batches in enumerate(plan, start=1):
        optimizer_step(accelerator, step_module, optimizer, scheduler, micro_batches, rows, collator, tc, step)
        ends.append(time.perf_counter())
    plain = [len(rows[i]["input_ids"]) for m in plan for b in m for i in b]
    padded = sum(len(b) * max(laid_out_length(rows[i], tc.k, tc.layout, tc.views) for i in b) for m in plan for b in m)
    laid = sum(laid_out_length(rows[i], tc.k, tc.layout, tc.views) for m in plan for b in m for i in b)
    return {"ends": ends, "tokens": sum(plain), "padding": 1 - laid / padded}


def trl_trainer(
    model_dir: Path,
    records: list[dict],
    batch_size: int,
    out: Path,
    grouped: bool = False,
    *,
    use_cpu: bool = True,
    bf16: bool = False,
    max_steps: int = -1,
):
    """TRL's SFTTrainer as its docs configure chat data with assistant-only loss; `grouped`:
    transformers' length-grouped sampler instead of its default random one. `use_cpu`
    False and `bf16` (its autocast mixed precision) for a CUDA machine (gpu_check.py).
    `max_steps` > 0: that many optimizer steps instead of one epoch (bench_real_shape.py)."""
    from datasets import Dataset

    try:
        from trl import SFTConfig, SFTTrainer
    except ImportError:
        raise SystemExit("bench_trl.py needs TRL: `make bench`, or `pip install -e '.[bench]'`") from None

    tokenizer = load_tokenizer(_config(model_dir, "sft", batch_size).model)
    tokenizer.chat_template = CHATML_MARKED
    torch.manual_seed(TRAIN["seed"])
    model = load_model(_config(model_dir, "sft", batch_size).model)
    args = SFTConfig(
        output_dir=str(out),
        assistant_only_loss=True,
        packing=False,
        padding_free=False,
        max_length=512,
        per_device_train_batch_size=batch_size,
        num_train_epochs=1,
        max_steps=max_steps,
        learning_rate=TRAIN["learning_rate"],
        lr_scheduler_type=TRAIN["scheduler"],
        warmup_steps=TRAIN["warmup_ratio"],  # a float < 1 is a ratio
        weight_decay=TRAIN["weight_decay"],
        max_grad_norm=TRAIN["max_grad_norm"],
        seed=TRAIN["seed"],
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=use_cpu,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in records])
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def trl_epoch(trainer) -> dict:
    """`trainer.train()` for one epoch; step ends from a callback, tokens from the collator."""
    from transformers import TrainerCallback

    ends, seen = [], {"tokens": 0, "cells": 0}

    class StepEnds(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    collator = trainer.data_collator

    def counting(features):
        batch = collator(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        seen["cells"] += batch["attention_mask"].numel()
        return batch

    trainer.data_collator = counting
    trainer.add_callback(StepEnds())
    ends.append(time.perf_counter())
    trainer.train()
    trainer.data_collator = collator
    return {"ends": ends, "tokens": seen["tokens"], "padding": 1 - seen["tokens"] / seen["cells"]}


def agreement(trainer, model_dir: Path, rows: list[dict], batch_size: int) -> dict:
    """TRL's tokens, masks and loss against ours, on the first batch, before any update."""
    data = trainer.train_dataset
    ids_equal = sum(list(d["input_ids"]) == list(r["input_ids"]) for d, r in zip(data, rows))
    labels_equal = sum(list(d["labels"]) == list(r["labels"]) for d, r in zip(data, rows))
    batch = trainer.data_collator([data[i] for i in range(batch_size)])
    model = trainer.model
    model.train()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, batch))
        ours = Collator(k=0, layout="inline", predictor_ids=(), pad_id=pad_id(trainer.processing_class))(
            rows[:batch_size]
        )
        our_loss = float(step_jepa_forward(model, ours, layout="inline", lam=0.0).lm_loss)
    return {
        "rows": len(rows),
        "input_ids_equal": ids_equal,
        "labels_equal": labels_equal,
        "trl_loss": trl_loss,
        "our_sft_loss": our_loss,
        "abs_diff": abs(trl_loss - our_loss),
        "losses_agree": abs(trl_loss - our_loss) <= 1e-4 * max(1.0, abs(our_loss)),
    }


def summarise(runs: list[dict], warmup: int) -> dict:
    """Fastest epoch of the rounds; median steady-state step over all rounds."""
    steps = [b - a for r in runs for a, b in list(zip(r["ends"], r["ends"][1:]))[warmup:]]
    epoch = min(r["ends"][-1] - r["ends"][0] for r in runs)
    return {
        "steps": len(runs[0]["ends"]) - 1,
        "median_step_ms": round(1000 * statistics.median(steps), 1),
        "epoch_s": round(epoch, 2),
        "tokens_per_s": round(runs[0]["tokens"] / epoch, 0),
        "padding": round(runs[0]["padding"], 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=256, help="N: conversations in the epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: steadier when shared)")
    parser.add_argument("--rounds", type=int, default=1, help="epochs per variant, in rotating order; fastest counts")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, records, rows = load_inputs(args.examples, Path(scratch))
        check = agreement(
            trl_trainer(model_dir, records, args.batch_size, Path(scratch) / "trl"), model_dir, rows, args.batch_size
        )
        names = ["trl_sft", "trl_sft_grouped", *OURS]
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                if name.startswith("trl"):
                    trainer = trl_trainer(
                        model_dir, records, args.batch_size, Path(scratch) / "trl", grouped=name == "trl_sft_grouped"
                    )
                    runs[name].append(trl_epoch(trainer))
                else:
                    runs[name].append(our_epoch(model_dir, rows, name, args.batch_size))
    table = {n: summarise(runs[n], args.warmup) for n in names}
    trl = table["trl_sft"]
    result = {
        "model": str(model_dir),
        "examples": len(rows),
        "batch_size": args.batch_size,
        "precision": "fp32",
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "agreement": check,
        "variants": table,
        "epoch_ratio_to_trl": {n: round(t["epoch_s"] / trl["epoch_s"], 3) for n, t in table.items()},
        "step_ratio_to_trl": {n: round(t["median_step_ms"] / trl["median_step_ms"], 3) for n, t in table.items()},
        "epoch_ratio_to_trl_grouped": {
            n: round(t["epoch_s"] / table["trl_sft_grouped"]["epoch_s"], 3) for n, t in table.items()
        },
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    result["target_inline_epoch_<=_trl_met"] = result["epoch_ratio_to_trl"]["jepa_inline"] <= 1.0
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not check["losses_agree"] or not check["input_ids_equal"] == check["labels_equal"] == check["rows"]:
        raise SystemExit("TRL and our SFT do not train on the same tokens and loss; see 'agreement'")


if __name__ == "__main__":
    main()
