"""FlexAttention against dense sdpa, forward only, on the CPU: per layout, the largest
difference of the losses and of the last hidden states (real positions), and the forward
time of each path on the same batch.

The model is a random Qwen2 of the embedded tiny model's size (4 layers, hidden 192) with
the tiny tokenizer, on GSM8K rows tokenised by the project (gpu_check.py's `build_inputs`).
Paths: `sdpa` with the dense 4D mask; `flex unfused` (torch's eager flex_attention from the
BlockMask); `flex compiled` (transformers' own path, torch.compile; its compile time is
reported apart, and each layout gets a fresh compile because torch 2.13's CPU flex kernel
failed to recompile with dynamic shapes). Times: median of --repeats forwards.

    .venv/bin/python benchmarks/bench_flex.py --batch-size 8 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from gpu_check import CPU_SMOKE, build_inputs

from stepjepa.config import ModelConfig
from stepjepa.method.collate import Collator
from stepjepa.method.flex_masks import uncompiled_flex
from stepjepa.method.forward import last_hidden, model_parts, step_jepa_forward
from stepjepa.model.modeling import add_predictor_tokens, load_model, load_tokenizer
from stepjepa.vocabulary import pad_id

SHAPE = {
    "hidden_size": 192,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4352,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}


def forward(model, batch: dict, layout: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Loss, last hidden state of the main pass, seconds."""
    start = time.perf_counter()
    with torch.no_grad():
        loss = step_jepa_forward(model, batch, layout=layout, lam=0.1).loss
        hidden = last_hidden(model_parts(model), batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    return loss, hidden, time.perf_counter() - start


def measure(model, rows, predictor_ids, pad, layout: str, repeats: int) -> dict:
    examples = rows
    results = {}
    for name in ("sdpa", "flex unfused", "flex compiled"):
        attn = "sdpa" if name == "sdpa" else "flex_attention"
        model.set_attn_implementation(attn)
        batch = Collator(
            k=2,
            layout=layout,
            predictor_ids=predictor_ids,
            pad_id=pad,
            attention="dense" if attn == "sdpa" else "spans",
        )(examples)
        compile_s = None
        try:
            if name == "flex compiled":
                torch._dynamo.reset()
                compile_s = forward(model, batch, layout)[2]  # first call compiles
            with uncompiled_flex() if name == "flex unfused" else contextlib.nullcontext():
                runs = [forward(model, batch, layout) for _ in range(repeats)]
        except Exception as err:  # torch's CPU flex kernel failing to compile: reported, not fatal
            results[name] = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0][:80]}"}
            continue
        loss, hidden, _ = runs[0]
        real = torch.arange(hidden.shape[1]) < batch["lengths"].unsqueeze(1)
        results[name] = {
            "loss": loss,
            "hidden": hidden[real],
            "ms": 1000 * statistics.median(r[2] for r in runs),
            "compile_s": compile_s,
        }
    model.set_attn_implementation("sdpa")
    dense = results["sdpa"]
    return {
        name: r
        if "error" in r
        else r
        | {
            "loss_diff": float((r["loss"] - dense["loss"]).abs()),
            "hidden_diff": float((r["hidden"] - dense["hidden"]).abs().max()),
        }
        for name, r in results.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = CPU_SMOKE.__class__(**{**CPU_SMOKE.__dict__, "shape": SHAPE, "rows": args.batch_size})
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, _, rows = build_inputs(scale, Path(scratch))
        cfg = ModelConfig(name_or_path=str(model_dir))
        model, tokenizer = load_model(cfg).eval(), load_tokenizer(cfg)
    predictor_ids = add_predictor_tokens(model, tokenizer, 2)
    rows = rows[: args.batch_size]
    tokens = sum(len(r["input_ids"]) for r in rows)
    print(f"batch {len(rows)} rows, {tokens} tokens, K = 2, fp32, {torch.get_num_threads()} thread(s)")
    print("| layout | path | forward (median) | max abs diff, loss | max abs diff, hidden | first call (compile) |")
    print("|---|---|---|---|---|---|")
    for layout in ("inline", "packed", "two_pass"):
        for name, r in measure(model, rows, predictor_ids, pad_id(tokenizer), layout, args.repeats).items():
            if "error" in r:
                print(f"| {layout} | {name} | failed: {r['error']} | | | |")
                continue
            first = f"{r['compile_s']:.1f} s" if r["compile_s"] is not None else ""
            print(f"| {layout} | {name} | {r['ms']:.1f} ms | {r['loss_diff']:.1e} | {r['hidden_diff']:.1e} | {first} |")


if __name__ == "__main__":
    main()
