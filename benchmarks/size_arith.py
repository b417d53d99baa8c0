"""Sizing of the arith task for `make demo`: one training run per try, scored
the way the sweep selects (greedy `accuracy_strict` on the first `eval.limit` validation
questions), with its compute cost.

    .venv/bin/python benchmarks/size_arith.py                    # every try in TRIES: the table
    .venv/bin/python benchmarks/size_arith.py --try demo         # one of them
    .venv/bin/python benchmarks/size_arith.py --set train.max_steps=300 --set train.k=2 ...

A try is the demo's settings (DEMO below, the Makefile's DEMO_PARAMS) plus its own
`dotted.key=value` changes. Each runs in-process on one torch thread (the machine's other
core stays free), through the same library calls as the DVC stages, `stepjepa train` and
`stepjepa evaluate --heldout`: fetch, prepare (validation carved out of train), build the
tiny model, tokenise, train (no tracking), generate and score, held-out NLL and the JEPA
view diagnostics. Data and model are cached per (data, tiny_model, tokenize) settings
under --work. CPU seconds (`time.process_time`) are the quiet-machine estimate of a
1-thread wall time; wall seconds grow with the machine's load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from stepjepa.config import Config, load_config

PARAMS = Path(__file__).resolve().parent.parent / "params.yaml"

# The Makefile's DEMO_PARAMS and DEMO_PROMPT (keep them equal), applied to params.yaml as
# `make demo` does; then what a measurement needs: no tracking, one SFT run (a Step-JEPA
# try sets train.k, lambda, loss and layout, which the demo's sweep sets per run).
DEMO = [
    "data.source=arith",
    "data.system_prompt='Solve step by step; answer in \\boxed{}.'",
    "data.arith.min_steps=2",
    "data.arith.max_steps=2",
    "data.arith.max_operand=5",
    "data.arith.max_value=20",
    "tiny_model.vocab_size=1024",
    "tiny_model.hidden_size=128",
    "tiny_model.intermediate_size=256",
    "tiny_model.num_hidden_layers=3",
    "tiny_model.max_position_embeddings=512",
    "train.max_steps=360",
    "train.batch_size=16",
    "train.epochs=10",
    "train.learning_rate=0.006",
    "train.checkpoint_every=null",
    "eval.limit=500",
    "eval.max_new_tokens=80",
    "eval.batch_size=100",
]
MEASURE = ["train.tracking=none", "train.log_model=false", "train.eval_every=null", "train.k=0", "train.lambda=0.0"]

# name -> changes to DEMO: the tries of benchmarks/results/arith-sizing.md, in the
# order they were run. `old_demo` is the sizing this replaced (three-step problems, 240 steps).
Q200 = "eval.limit=200"
JEPA = "train.k=2", "train.lambda=2.0"
TRIES: dict[str, list[str]] = {
    "old_demo": [Q200, "data.arith.max_steps=3", "train.max_steps=240"],
    "s2_pm_240": [Q200, "train.max_steps=240", 'data.arith.operations=[+,"-"]'],
    "s2_240": [Q200, "train.max_steps=240"],
    "s2_480": [Q200, "train.max_steps=480"],
    "s2_240_lr1e-2": [Q200, "train.max_steps=240", "train.learning_rate=0.01"],
    "s2_480_lr1e-2": [Q200, "train.max_steps=480", "train.learning_rate=0.01"],
    "s2_b32_240_lr1e-2": [Q200, "train.max_steps=240", "train.batch_size=32", "train.learning_rate=0.01"],
    "old_demo_480": [Q200, "data.arith.max_steps=3", "train.max_steps=480"],
    "s2_v12_480": [Q200, "train.max_steps=480", "data.arith.max_value=12"],
    "s2_360": [Q200],
    "s2_360_seed1": [Q200, "train.seed=1"],
    "s2_480_seed1": [Q200, "train.max_steps=480", "train.seed=1"],
    "s2_L2_480": [Q200, "train.max_steps=480", "tiny_model.num_hidden_layers=2"],
    "inline_cos_k2_l2": [*JEPA, "train.loss=cosine"],
    "inline_nce_k2_l2": [*JEPA, "train.loss=infonce"],
    "inline_cos_stopgrad_k2_l2": [*JEPA, "train.loss=cosine", "train.target_grad=false"],
    "demo": [],
    "inline_nce_k2_l0.5": ["train.k=2", "train.lambda=0.5", "train.loss=infonce"],
    "inline_nce_k1_l0.1": ["train.k=1", "train.lambda=0.1", "train.loss=infonce"],
    "inline_nce_k2_l0.02": ["train.k=2", "train.lambda=0.02", "train.loss=infonce"],
    "inline_cos_k2_l0.1": ["train.k=2", "train.lambda=0.1", "train.loss=cosine"],
    "inline_nce_k1_l0.02": ["train.k=1", "train.lambda=0.02", "train.loss=infonce"],
    "packed_nce_k2_l0.1": ["train.k=2", "train.lambda=0.1", "train.loss=infonce", "train.layout=packed"],
    "packed_nce_k2_l0.5": ["train.k=2", "train.lambda=0.5", "train.loss=infonce", "train.layout=packed"],
    "packed_nce_k2_l0.02": ["train.k=2", "train.lambda=0.02", "train.loss=infonce", "train.layout=packed"],
    "packed_nce_k1_l0.1": ["train.k=1", "train.lambda=0.1", "train.loss=infonce", "train.layout=packed"],
    "demo_seed1": ["train.seed=1"],
    "packed_nce_k2_l0.02_seed1": [
        "train.k=2",
        "train.lambda=0.02",
        "train.loss=infonce",
        "train.layout=packed",
        "train.seed=1",
    ],
}


def build_config(overrides: list[str]) -> Config:
    return load_config(PARAMS, [*DEMO, *MEASURE, *overrides])


def prepared_data(cfg: Config, work: Path) -> dict[str, Path]:
    """fetch -> prepare -> build_model -> tokenize, cached by the settings they read."""
    import pyarrow.parquet as pq

    from stepjepa.data.prepare import prepare_file, split_validation, write_json_lines
    from stepjepa.data.sources import fetch
    from stepjepa.data.tokenization import encode_records, load_tokenizer
    from stepjepa.model.tiny_model import build_tiny_model, tokenizer_corpus

    key = json.dumps(
        [
            cfg.data.model_dump(mode="json"),
            cfg.tiny_model.model_dump(mode="json"),
            cfg.tokenize.model_dump(mode="json"),
        ],
        sort_keys=True,
    )
    root = work / "data" / hashlib.sha256(key.encode()).hexdigest()[:12]
    paths = {
        "root": root,
        "model": root / "model",
        "train": root / "train.parquet",
        "validation": root / "validation.parquet",
        "validation_jsonl": root / "prepared" / "validation.jsonl",
    }
    if paths["validation"].is_file():
        return paths
    fetch(cfg.data, root / "raw")
    records, _ = prepare_file(root / "raw" / "train.jsonl", "train", cfg.data, "raise")
    splits = dict(zip(("train", "validation"), split_validation(records, cfg.data.validation_size), strict=True))
    build_tiny_model(cfg.tiny_model, tokenizer_corpus(splits["train"]), paths["model"])
    tokenizer = load_tokenizer(str(paths["model"]))
    for split, rows in splits.items():
        write_json_lines(rows, root / "prepared" / f"{split}.jsonl")
        pq.write_table(encode_records(tokenizer, rows, cfg.tokenize.max_length, cfg.tokenize.date_string), paths[split])
    return paths


def run_try(name: str, overrides: list[str], work: Path) -> dict[str, Any]:
    from stepjepa.evaluation.eval_examples import load_examples
    from stepjepa.evaluation.evaluate import evaluate_model, heldout_evaluation
    from stepjepa.method.diagnostics import collapse_warnings
    from stepjepa.model.model_source import load_model
    from stepjepa.training.train import train

    cfg = build_config(overrides)
    paths = prepared_data(cfg, work)
    cfg = build_config([f"model.name_or_path={paths['model']}", *overrides])
    out = work / "runs" / f"{name}-{time.strftime('%H%M%S')}"
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(cfg, paths["train"], out)
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu

    wall, cpu = time.perf_counter(), time.process_time()
    model, tokenizer = load_model(result.model_dir, cfg, "cpu")
    examples = load_examples(paths["validation_jsonl"], cfg.data.system_prompt, cfg.eval.limit)
    scored = evaluate_model(
        model,
        tokenizer,
        examples,
        batch_size=cfg.eval.batch_size,
        max_new_tokens=cfg.eval.max_new_tokens,
        date_string=cfg.tokenize.date_string,
    )
    generate_wall, generate_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    held = heldout_evaluation(model, tokenizer, paths["validation"], cfg, out / "eval")
    heldout_wall, heldout_cpu = time.perf_counter() - wall, time.process_time() - cpu
    (out / "eval" / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scored.rows))

    first, last = result.history[0], result.history[-1]
    warnings = collapse_warnings(held, result.history, loss_kind=cfg.train.loss) if cfg.train.lambda_ > 0 else []
    return {
        "name": name,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "accuracy_strict": scored.metrics["accuracy_strict"],
        "questions": len(examples),
        "hit_max_new_tokens": scored.metrics["hit_max_new_tokens"],
        "lm_loss_first": first.get("lm_loss"),
        "lm_loss_last": last.get("lm_loss"),
        "jepa_loss_first": first.get("jepa_loss"),
        "jepa_loss_last": last.get("jepa_loss"),
        "val_nll": held["nll"],
        "val_step2_nll": held["step2_nll"],
        "mean_cos": held.get("mean_cos"),
        "spread_view1": held.get("spread_view1"),
        "spread_view2": held.get("spread_view2"),
        "collapse_warnings": warnings,
        "train_wall_s": train_wall,
        "train_cpu_s": train_cpu,
        "generate_wall_s": generate_wall,
        "generate_cpu_s": generate_cpu,
        "heldout_wall_s": heldout_wall,
        "heldout_cpu_s": heldout_cpu,
        "out": str(out),
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of benchmarks/results/arith-sizing.md; an SFT run's view spreads in parentheses."""
    lines = [
        "| try | changes to DEMO | val `accuracy_strict` (questions) | val NLL | view spread v1 / v2 "
        "| collapse warning | train CPU-s | eval CPU-s: generate + held-out | train wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        jepa = any(o.startswith("train.lambda=") and o != "train.lambda=0.0" for o in r["overrides"])
        spread = f"{r['spread_view1']:.2g} / {r['spread_view2']:.2g}"
        warned = ("yes" if r["collapse_warnings"] else "no") if jepa else "-"
        lines.append(
            f"| {r['name']} | {', '.join(r['overrides']) or '-'} "
            f"| {r['accuracy_strict']:.3f} ({r['questions']}) | {r['val_nll']:.3f} "
            f"| {spread if jepa else f'({spread})'} | {warned} "
            f"| {r['train_cpu_s']:.1f} | {r['generate_cpu_s']:.1f} + {r['heldout_cpu_s']:.1f} "
            f"| {r['train_wall_s']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--try", dest="tries", action="append", choices=sorted(TRIES), help="default: all")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one ad-hoc try: DEMO with these changes (instead of TRIES)",
    )
    parser.add_argument("--name", default="adhoc", help="name of the --set try")
    parser.add_argument("--work", type=Path, default=Path("/tmp/size_arith"), help="data cache and run folders")
    parser.add_argument("--log", type=Path, help="append each try's result as a JSON line here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    todo = {args.name: args.overrides} if args.overrides else {t: TRIES[t] for t in (args.tries or TRIES)}
    rows = []
    for name, overrides in todo.items():
        rows.append(run_try(name, overrides, args.work))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.log:
            with args.log.open("a") as fh:
                fh.write(json.dumps(rows[-1]) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
