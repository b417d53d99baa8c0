"""Throughput of stepjepa's batched greedy generation against batch size 1 and against
transformers' own batched `model.generate`, on the same GSM8K prompts.

Generates completions for the same N prompts (default 64) with batch size 1, batched,
and with transformers' `generate` (greedy, left padding, the same batch size, stop ids
and max_new_tokens; its batches sorted by length as ours are, which is charitable to it:
a plain loop over the prompts pads more), checks that all three give identical
completions, and prints completions/s and ratios (targets on a 2-core CPU with the
embedded tiny model: >= 8x batch 1, >= 1.5x transformers' `generate`), plus the ratios of
CPU seconds, which other jobs on a shared machine disturb less.

    .venv/bin/python benchmarks/bench_generation.py                 # models/tiny, data/prepared/test.jsonl
    .venv/bin/python benchmarks/bench_generation.py --threads 1 --batch-size 64 --max-new-tokens 256
    .venv/bin/python benchmarks/bench_generation.py --compare hf      # only against transformers' generate

Without `models/tiny` (the `build_model` stage) a tiny model with the default
`tiny_model` params is built in a temporary folder from the prompts' text.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from stepjepa.config import TinyModelConfig
from stepjepa.evaluation.eval_examples import load_examples
from stepjepa.evaluation.generation import Completion, chat_prompt_ids, generate_greedy, left_pad, stop_token_ids

# The one place generated ids become a Completion (cut at the first stop id, decoded):
# transformers' output goes through it too, so that "identical" compares like with like.
from stepjepa.evaluation.generation import _completion as to_completion
from stepjepa.prompts import DEFAULT_SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]


def _data_file(arg: Path | None) -> Path:
    """--data, else the prepared test split, else the raw GSM8K test file beside the project."""
    for candidate in [arg, ROOT / "data/prepared/test.jsonl", ROOT.parent / "shared/data/gsm8k/test.jsonl"]:
        if candidate is not None and candidate.is_file():
            return candidate
    raise SystemExit("no GSM8K test file: pass --data FILE (prepared or raw GSM8K JSONL)")


def _model_dir(arg: Path | None, texts: list[str], scratch: Path) -> Path:
    if arg is not None:
        return arg
    if (ROOT / "models/tiny/config.json").is_file():
        return ROOT / "models/tiny"
    from stepjepa.model.tiny_model import build_tiny_model

    return build_tiny_model(TinyModelConfig(), texts, scratch / "tiny")


def hf_generate(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> list[Completion]:
    """transformers' batched greedy `generate`: left-padded batches, its default cache and
    attention, the same stop ids and pad id as `generate_greedy`; batches sorted by length
    as ours are, completions returned in the input order."""
    stop_ids = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    config = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
    )
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: dict[int, Completion] = {}
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = left_pad([prompts[i] for i in chunk], pad_id)
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                generation_config=config,
            )
            for index, tokens in zip(chunk, output[:, input_ids.shape[1] :].cpu().tolist(), strict=True):
                results[index] = to_completion(tokenizer, tokens, set(stop_ids))
    return [results[i] for i in range(len(prompts))]


def _timed(model, tokenizer, prompts, batch_size: int, max_new_tokens: int, repeats: int, generate=generate_greedy):
    """Completions, and the fastest of `repeats` runs in wall seconds and CPU seconds.

    The fastest run is the one other jobs on the machine disturbed least (as `timeit`
    advises). CPU seconds are reported too: on a shared machine other jobs stretch wall
    time, and stretch the many short batch-1 steps more than the few long batched ones.
    """
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return completions, min(walls), min(cpus)


def _cpu_name() -> str:
    """The CPU's model name: ratios differ between CPUs (benchmarks/results/generation.md)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model directory (default: models/tiny)")
    parser.add_argument("--data", type=Path, help="GSM8K JSONL (default: data/prepared/test.jsonl)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="the eval default")
    # A prepared GSM8K test solution is 89 tokens on average (p90 140) with the tiny tokenizer.
    parser.add_argument("--max-new-tokens", type=int, default=128)
    # Default: torch's default, all cores, as `stepjepa evaluate` runs. On a shared machine
    # OpenMP threads stall whenever another job holds a core, which once slowed batch-1
    # generation ~9x and inflated the ratio; the fastest of --repeats runs guards against
    # that, and `--threads 1` shows the single-core ratio.
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; the fastest counts")
    parser.add_argument(
        "--compare",
        choices=["both", "batch1", "hf"],
        default="both",
        help="batch1: against batch size 1; hf: against transformers' generate; both",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    examples = load_examples(_data_file(args.data), DEFAULT_SYSTEM_PROMPT, limit=args.prompts)
    with tempfile.TemporaryDirectory() as scratch:
        texts = [m["content"] for e in examples for m in e.messages]
        model_dir = _model_dir(args.model, texts, Path(scratch))
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = [chat_prompt_ids(tokenizer, e.messages) for e in examples]
    _timed(model, tokenizer, prompts[:2], 2, 4, 1)  # warm-up: first-call allocations and lazy imports
    _timed(model, tokenizer, prompts[:2], 2, 4, 1, hf_generate)
    bs = args.batch_size
    batched, batched_s, batched_cpu = _timed(model, tokenizer, prompts, bs, args.max_new_tokens, args.repeats)
    result = {
        "model": str(model_dir),
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "prompts": len(prompts),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "generated_tokens": sum(c.num_tokens for c in batched),
        f"batch_{bs}_completions_per_s": round(len(prompts) / batched_s, 2),
    }
    failures = []
    if args.compare in ("both", "batch1"):
        single, single_s, single_cpu = _timed(model, tokenizer, prompts, 1, args.max_new_tokens, args.repeats)
        result |= {
            "batch_1_completions_per_s": round(len(prompts) / single_s, 2),
            "identical": single == batched,
            "ratio": round(single_s / batched_s, 2),
            "cpu_time_ratio": round(single_cpu / batched_cpu, 2),
        }
        failures += [] if result["identical"] else ["batch-size-1"]
    if args.compare in ("both", "hf"):
        hf, hf_s, hf_cpu = _timed(model, tokenizer, prompts, bs, args.max_new_tokens, args.repeats, hf_generate)
        result |= {
            f"hf_generate_batch_{bs}_completions_per_s": round(len(prompts) / hf_s, 2),
            "identical_to_hf_generate": hf == batched,
            "ratio_to_hf_generate": round(hf_s / batched_s, 2),
            "cpu_time_ratio_to_hf_generate": round(hf_cpu / batched_cpu, 2),
            "target_hf_>=1.5x_met": hf_s / batched_s >= 1.5,
        }
        failures += [] if result["identical_to_hf_generate"] else ["transformers' generate"]
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result, indent=2))
    if failures:
        raise SystemExit(f"batched completions differ from those of {' and '.join(failures)}")


if __name__ == "__main__":
    main()
