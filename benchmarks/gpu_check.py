"""`make gpu-check`: what a CUDA machine tells us about the pipeline, in one table, in <= 10 min.

On one machine with CUDA it runs, on a model built from Qwen2.5-0.5B's configuration (24
layers, hidden 896, 14 heads, 2 KV heads, intermediate 4,864, vocab 151,936; random weights,
transformers' Qwen2Config, no hub download) and GSM8K rows tokenised by the project's own
pipeline (`stepjepa.data.tokenization.encode_records`, with the embedded tiny tokenizer trained on
GSM8K; Qwen's tokenizer would need the hub), these sections:

  steps       forward + backward of batch 4 under bf16 autocast: tokens/s and peak memory of
              SFT, Step-JEPA inline and packed (K = 2), with `sdpa` and `flex_attention`;
              flex's losses and gradients checked against sdpa's (bench_step.py's timing)
  trl         one epoch of TRL's SFTTrainer on the same rows against ours (bench_trl.py)
  generation  our batched greedy generation against transformers' `generate` on 256 GSM8K
              test prompts (bench_generation.py)
  sweep       a two-config sweep (SFT and K = 1, lambda = 0.1) through the real flow
              (`python -m pipelines.sweep`: accelerate launch, evaluation, MLflow, Prefect)
  ddp         `accelerate launch` of `stepjepa.training.train` over every visible GPU

and writes one markdown table (stdout and --out, default benchmarks/results/gpu-check.md);
docs/gpu-check.md says how to record it (a page of benchmarks/RESULTS.md). Without CUDA it prints
one line and exits 0. `--cpu-smoke` runs the same section functions at toy size on the
CPU in fp32 (tiny Qwen2, a few rows; flex forward only: torch has no flex backward on
the CPU), so that tests/project/test_gpu_check.py keeps this script from rotting; the sweep and
DDP sections there only build their project and command (a run takes minutes of CPU).

    python benchmarks/gpu_check.py                  # needs CUDA; make gpu-check
    python benchmarks/gpu_check.py --cpu-smoke      # seconds, on any machine
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the sibling benchmark scripts, reused below

import bench_generation  # noqa: E402
import bench_step  # noqa: E402
import bench_trl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from stepjepa.config import ModelConfig, TinyModelConfig, load_config  # noqa: E402
from stepjepa.data.tokenization import encode_records  # noqa: E402
from stepjepa.method.batching import load_rows  # noqa: E402
from stepjepa.method.collate import Collator, attention_for, length_grouped_batches  # noqa: E402
from stepjepa.method.flex_masks import uncompiled_flex  # noqa: E402
from stepjepa.method.forward import step_jepa_forward  # noqa: E402
from stepjepa.model.modeling import add_predictor_tokens, load_model, load_tokenizer  # noqa: E402
from stepjepa.vocabulary import pad_id  # noqa: E402

QWEN25_05B = {
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TINY = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4352,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": True,
}
STEP_VARIANTS = ("sft", "inline", "packed")  # bench_step.VARIANTS: K = 2, lambda = 0.1 (SFT: K = 0, lambda = 0)
ATTENTIONS = ("sdpa", "flex_attention")
SECTIONS = ("steps", "trl", "generation", "sweep", "ddp")


@dataclass(frozen=True)
class Scale:
    """How big each section runs: the CUDA check, or the CPU smoke of the same code."""

    device: str
    shape: dict
    rows: int = 128  # GSM8K training rows the steps and TRL sections train on
    batch_size: int = 4
    batches: int = 12  # timed batches per step variant, after `warmup`
    warmup: int = 3
    prompts: int = 256
    gen_batch: int = 64
    max_new_tokens: int = 128
    train_steps: int = 20  # per sweep run and DDP run
    run_sections: tuple[str, ...] = SECTIONS
    bf16: bool = True
    # Flex against sdpa, relative differences of the loss and of all gradients (L2): bf16
    # autocast kernels round differently (bf16's epsilon is 7.8e-3); a mask error shows as
    # O(1). The masks themselves are proven equal cell by cell in tests/method/test_flex_masks.py.
    tolerance: dict = field(default_factory=lambda: {"loss": 1e-2, "grad": 1e-1})


GPU = Scale(device="cuda", shape=QWEN25_05B)
CPU_SMOKE = Scale(
    device="cpu",
    shape=TINY,
    rows=8,
    batch_size=4,
    batches=1,
    warmup=1,
    prompts=4,
    gen_batch=4,
    max_new_tokens=4,
    train_steps=2,
    run_sections=("steps", "trl", "generation"),
    bf16=False,
    tolerance={"loss": 1e-6, "grad": 1e-5},
)


def gsm8k_dir() -> Path:
    """$GSM8K_DIR, else ../shared/data/gsm8k beside the project, else /work/shared/data/gsm8k."""
    for candidate in [os.environ.get("GSM8K_DIR"), ROOT.parent / "shared/data/gsm8k", "/work/shared/data/gsm8k"]:
        if candidate and (Path(candidate) / "train.jsonl").is_file():
            return Path(candidate)
    raise SystemExit("gpu_check: no GSM8K train.jsonl: set GSM8K_DIR to the folder holding train.jsonl and test.jsonl")


def build_inputs(scale: Scale, scratch: Path) -> tuple[Path, list[dict], list[dict]]:
    """Model folder (a random Qwen2 of `scale.shape` with the tiny GSM8K tokenizer), the
    prepared conversations and their tokenised rows (the project's tokenize stage)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from stepjepa.model.tiny_model import build_tiny_model, tokenizer_corpus

    os.environ["GSM8K_DIR"] = str(gsm8k_dir())
    records = bench_step.gsm8k_records(max(scale.rows, 64) + 64)  # the last 64: the sweep's validation/test
    tokenizer_dir = build_tiny_model(TinyModelConfig(), tokenizer_corpus(records), scratch / "tokenizer")
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tokenizer_dir)))
    torch.manual_seed(0)
    config = Qwen2Config(
        **scale.shape,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_dir = scratch / "model"
    Qwen2ForCausalLM(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    # Encode with the tokenizer as model_dir loads it, as TRL, generation and training do:
    # under model_type qwen2, transformers loads it as Qwen2Tokenizer, whose pre-tokenizer
    # (Qwen2's split regex) cuts the same text into other tokens than the tiny one's own.
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    pq.write_table(encode_records(tokenizer, records, 512, "26 Jul 2024"), scratch / "rows.parquet")
    return model_dir, records, load_rows(scratch / "rows.parquet")


def _autocast(scale: Scale):
    return torch.autocast("cuda", dtype=torch.bfloat16) if scale.bf16 else contextlib.nullcontext()


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])


def attention_agreement(
    model,
    examples: list[dict],
    variant: str,
    predictor_ids: list[int],
    pad: int,
    scale: Scale,
    pair: tuple[str, str] = ATTENTIONS,
) -> dict:
    """One batch through both attention implementations of `pair` (reference first): the
    relative loss difference and, where both have a backward, the relative L2 difference of
    all gradients. Flex on the CPU runs forward only (torch has no flex backward there)."""
    layout, k, lam, _ = bench_step.VARIANTS[variant]
    backward = scale.device != "cpu" or "flex_attention" not in pair
    out = []
    for attn in pair:
        model.set_attn_implementation(attn)
        collator = Collator(
            k=k, layout=layout, predictor_ids=predictor_ids[:k], pad_id=pad, attention=attention_for(attn)
        )
        batch = {key: value.to(scale.device) for key, value in collator(examples).items()}
        model.zero_grad(set_to_none=True)
        if backward:
            with _autocast(scale):
                loss = step_jepa_forward(model, batch, layout=layout, lam=lam).loss
            loss.backward()
            out.append((loss.detach().float(), _grads(model)))
        else:
            with torch.no_grad(), uncompiled_flex():
                out.append((step_jepa_forward(model, batch, layout=layout, lam=lam).loss.float(), None))
    model.zero_grad(set_to_none=True)
    model.set_attn_implementation("sdpa")
    (ref_loss, ref_grad), (loss, grad) = out
    check = {"loss_rel_diff": float((loss - ref_loss).abs() / ref_loss.abs().clamp_min(1e-12))}
    if ref_grad is not None:
        check["grad_rel_diff"] = float((grad - ref_grad).norm() / ref_grad.norm())
    check["ok"] = (
        check["loss_rel_diff"] <= scale.tolerance["loss"] and check.get("grad_rel_diff", 0.0) <= scale.tolerance["grad"]
    )
    return check


def step_section(model_dir: Path, rows: list[dict], scale: Scale) -> list[dict]:
    """Tokens/s and peak memory of SFT, inline and packed with sdpa and flex, same batches."""
    model = load_model(ModelConfig(name_or_path=str(model_dir))).to(scale.device).train()
    predictor_ids = add_predictor_tokens(model, load_tokenizer(ModelConfig(name_or_path=str(model_dir))), 2)
    pad = pad_id(load_tokenizer(ModelConfig(name_or_path=str(model_dir))))
    plain = [len(r["input_ids"]) for r in rows]
    batches = length_grouped_batches(plain, scale.batch_size, seed=0)[: scale.warmup + scale.batches]
    tokens = statistics.mean(sum(plain[i] for i in b) for b in batches[scale.warmup :])
    table = []
    for attn in ATTENTIONS:
        model.set_attn_implementation(attn)
        if attn == "flex_attention" and scale.device == "cpu":
            timed = {}  # no flex backward on the CPU: its check below is forward only
        else:
            with _autocast(scale):
                timed = bench_step.timed_steps(
                    model, rows, batches, list(STEP_VARIANTS), predictor_ids, pad, scale.warmup
                )
        for variant in STEP_VARIANTS:
            row = {"section": "steps", "variant": variant, "attention": attn}
            if variant in timed:
                with _autocast(scale):
                    peak = bench_step.peak_memory(model, rows, batches[scale.warmup :], variant, predictor_ids, pad)
                row |= {"tokens_per_s": tokens / statistics.median(timed[variant]), "peak_mb": peak}
            if attn == "flex_attention":
                check = attention_agreement(model, [rows[i] for i in batches[-1]], variant, predictor_ids, pad, scale)
                row |= {
                    "check": check["ok"],
                    "note": ", ".join(f"{k} {v:.2e}" for k, v in check.items() if k != "ok")
                    + ("" if scale.device != "cpu" else "; forward only"),
                }
            table.append(row)
    model.set_attn_implementation("sdpa")
    return table


def trl_section(model_dir: Path, records: list[dict], rows: list[dict], scale: Scale, scratch: Path) -> list[dict]:
    """One epoch each of TRL's SFTTrainer and of our SFT, inline and packed on the same rows."""
    try:
        import trl  # noqa: F401
    except ImportError:
        print("gpu_check: trl is not installed, skipping the TRL section (pip install -e '.[bench]')")
        return [{"section": "trl", "variant": "trl_sft", "note": "skipped: trl not installed"}]
    on_cpu, precision = scale.device == "cpu", "bf16" if scale.bf16 else "fp32"
    n = scale.rows
    runs = {
        "trl_sft": bench_trl.trl_epoch(
            bench_trl.trl_trainer(
                model_dir, records[:n], scale.batch_size, scratch / "trl", use_cpu=on_cpu, bf16=scale.bf16
            )
        )
    }
    for name in bench_trl.OURS:
        runs[name] = bench_trl.our_epoch(model_dir, rows[:n], name, scale.batch_size, precision)
    warmup = min(scale.warmup, len(runs["sft"]["ends"]) - 2)
    table = []
    for name, run in runs.items():
        summary = bench_trl.summarise([run], warmup)
        table.append(
            {
                "section": "trl",
                "variant": name,
                "attention": "sdpa",
                "tokens_per_s": summary["tokens_per_s"],
                "note": f"{summary['steps']} optimizer steps, epoch {summary['epoch_s']} s, "
                f"padding {summary['padding']:.1%}",
            }
        )
    return table


def generation_section(model_dir: Path, scale: Scale) -> list[dict]:
    """Our batched greedy generation against transformers' `generate`, same prompts and batches."""
    from transformers import AutoModelForCausalLM

    from stepjepa.evaluation.eval_examples import load_examples
    from stepjepa.evaluation.generation import chat_prompt_ids
    from stepjepa.prompts import DEFAULT_SYSTEM_PROMPT

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    dtype = torch.bfloat16 if scale.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(scale.device)
    examples = load_examples(gsm8k_dir() / "test.jsonl", DEFAULT_SYSTEM_PROMPT, limit=scale.prompts)
    prompts = [chat_prompt_ids(tokenizer, e.messages) for e in examples]
    args = (scale.gen_batch, scale.max_new_tokens, 1)
    bench_generation._timed(model, tokenizer, prompts[:2], 2, 4, 1)  # warm-up: lazy imports, allocator
    ours, ours_s, _ = bench_generation._timed(model, tokenizer, prompts, *args)
    hf, hf_s, _ = bench_generation._timed(model, tokenizer, prompts, *args, bench_generation.hf_generate)
    tokens = sum(c.num_tokens for c in ours)
    setting = f"{len(prompts)} prompts, batch {scale.gen_batch}, {scale.max_new_tokens} new tokens"
    same = sum(a == b for a, b in zip(ours, hf))
    # In fp32 both must agree exactly; in bf16 the two implementations' kernels round
    # differently and a random model's near-tied logits then pick other tokens: reported only.
    check = same == len(prompts) if not scale.bf16 else None
    return [
        {
            "section": "generation",
            "variant": name,
            "tokens_per_s": tokens / seconds,
            "check": check,
            "note": f"{setting}, {len(prompts) / seconds:.1f} completions/s, identical {same}/{len(prompts)}"
            + ("" if name == "ours" else f"; ours {hf_s / ours_s:.2f}x as fast"),
        }
        for name, seconds in (("ours", ours_s), ("transformers generate", hf_s))
    ]


def _env(project: Path) -> dict[str, str]:
    """The child's environment: this checkout's code, no hub, MLflow and Prefect state in `project`."""
    return dict(os.environ) | {
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "PREFECT_HOME": str(project / ".prefect"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{project}/mlflow.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def sweep_project(model_dir: Path, records: list[dict], scale: Scale, project: Path) -> list[str]:
    """A project folder for the sweep flow (tests/support/projects.py's layout, GSM8K rows)
    and the command that runs it; the params are checked by the project's own loader."""
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)))
    splits = {"train": records[:-64] or records, "validation": records[-64:-32], "test": records[-32:]}
    for folder in ("data/tokenized", "data/prepared"):
        (project / folder).mkdir(parents=True, exist_ok=True)
    for split, part in splits.items():
        pq.write_table(encode_records(tokenizer, part, 512, "26 Jul 2024"), project / f"data/tokenized/{split}.parquet")
        (project / f"data/prepared/{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    params = {
        "model": {"name_or_path": str(model_dir)},
        "train": {
            "max_steps": scale.train_steps,
            "batch_size": scale.batch_size,
            "checkpoint_every": None,
            "log_every": 5,
            "precision": "bf16" if scale.bf16 else "fp32",
            "eval_every": None,
        },
        "eval": {"limit": 16, "max_new_tokens": 32, "batch_size": 16},
        "sweep": {
            "ks": [1],
            "lambdas": [0.1],
            "seeds": [0],
            "experiment": "gpu-check",
            "registered_model_name": "gpu-check",
        },
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    load_config(project / "params.yaml", [])
    return [
        sys.executable,
        "-m",
        "pipelines.sweep",
        "--params",
        "params.yaml",
        "--tokenized",
        "data/tokenized",
        "--prepared",
        "data/prepared",
        "--runs-dir",
        "runs/sweep",
        "--report-dir",
        "metrics/sweep",
    ]


def sweep_section(model_dir: Path, records: list[dict], scale: Scale, scratch: Path) -> list[dict]:
    """Two configs (SFT; K = 1, lambda = 0.1) through `python -m pipelines.sweep`."""
    project = scratch / "sweep"
    command = sweep_project(model_dir, records, scale, project)
    if "sweep" not in scale.run_sections:
        return [{"section": "sweep", "variant": "2 configs", "note": "project built, not run in --cpu-smoke"}]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=project, env=_env(project), capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    accuracy = project / "metrics/sweep/accuracy.json"
    found = json.loads(accuracy.read_text()) if accuracy.is_file() else []
    note = f"exit {done.returncode}, {wall:.0f} s, {scale.train_steps} steps per run"
    if done.returncode:
        note += "; " + (done.stderr.strip().splitlines() or ["no stderr"])[-1][:200]
    return [
        {
            "section": "sweep",
            "variant": "2 configs",
            "check": done.returncode == 0 and len(found) >= 2,
            "note": note + "; configs " + ", ".join(str(r.get("config")) for r in found),
        }
    ]


def ddp_command(model_dir: Path, data: Path, out: Path, gpus: int, scale: Scale) -> list[str]:
    """`accelerate launch` of `stepjepa.training.train` on `gpus` processes (packed, K = 2)."""
    params = out.parent / "ddp-params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "model": {"name_or_path": str(model_dir)},
                "train": {
                    "k": 2,
                    "lambda": 0.1,
                    "layout": "packed",
                    "max_steps": scale.train_steps,
                    "batch_size": scale.batch_size,
                    "precision": "bf16" if scale.bf16 else "fp32",
                    "checkpoint_every": None,
                    "tracking": "none",
                    "log_every": 5,
                },
            }
        )
    )
    load_config(params, [])
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(max(gpus, 1)),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    launch += ["--multi_gpu"] if gpus > 1 else (["--cpu"] if gpus == 0 else [])
    return launch + ["-m", "stepjepa.training.train", "--params", str(params), "--data", str(data), "--out", str(out)]


def ddp_section(model_dir: Path, scale: Scale, scratch: Path) -> list[dict]:
    """Training over every visible GPU: examples/s of the whole launch, start-up included."""
    gpus = torch.cuda.device_count() if scale.device == "cuda" else 0
    command = ddp_command(model_dir, scratch / "rows.parquet", scratch / "ddp-run", gpus, scale)
    if "ddp" not in scale.run_sections:
        return [{"section": "ddp", "variant": "accelerate launch", "note": "command built, not run in --cpu-smoke"}]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=_env(scratch), capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    examples = scale.train_steps * scale.batch_size * max(gpus, 1)
    note = f"{gpus} GPU(s), {scale.train_steps} steps of batch {scale.batch_size} per GPU, {wall:.0f} s with start-up"
    if done.returncode:
        note += "; " + (done.stderr.strip().splitlines() or ["no stderr"])[-1][:200]
    return [
        {
            "section": "ddp",
            "variant": f"{gpus} GPU processes" if gpus else "1 CPU process",
            "check": done.returncode == 0,
            "examples_per_s": examples / wall,
            "note": note,
        }
    ]


def markdown(rows: list[dict], scale: Scale, seconds: float) -> str:
    """One table in the style of benchmarks/results/*.md, with the machine and date above it."""
    if scale.device == "cuda":
        machine = f"{torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    else:
        machine = f"{bench_generation._cpu_name()} (CPU smoke: tiny Qwen2, fp32)"
    head = (
        f"`python benchmarks/gpu_check.py{' --cpu-smoke' if scale.device == 'cpu' else ''}`: {machine}, "
        f"torch {torch.__version__}, Python {platform.python_version()}, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}, {seconds:.0f} s in all; "
        f"batch {scale.batch_size} of GSM8K rows, {'bf16 autocast' if scale.bf16 else 'fp32'}. Peak memory: "
        f"{'torch.cuda.max_memory_allocated' if scale.device == 'cuda' else 'tensors saved for backward'}.\n\n"
    )
    lines = [
        "| section | variant | attention | tokens/s | peak memory | check | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        rate = (
            f"{r['tokens_per_s']:,.0f}"
            if "tokens_per_s" in r
            else (f"{r['examples_per_s']:.2f} examples/s" if "examples_per_s" in r else "-")
        )
        peak = f"{r['peak_mb']:,.0f} MB" if "peak_mb" in r else "-"
        check = {True: "ok", False: "**FAILED**"}.get(r.get("check"), "-")
        lines.append(
            f"| {r['section']} | {r['variant']} | {r.get('attention', '-')} | {rate} | {peak} | {check} "
            f"| {r.get('note', '')} |"
        )
    return head + "\n".join(lines) + "\n"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def run(scale: Scale, sections: tuple[str, ...]) -> list[dict]:
    """Every asked section on `scale`, in a scratch folder; table rows in order."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        scratch = Path(tmp)
        model_dir, records, tokenised = build_inputs(scale, scratch)
        for section in sections:
            print(f"gpu_check: {section} ...", file=sys.stderr, flush=True)
            if section == "steps":
                rows += step_section(model_dir, tokenised, scale)
            elif section == "trl":
                rows += trl_section(model_dir, records, tokenised, scale, scratch)
            elif section == "generation":
                rows += generation_section(model_dir, scale)
            elif section == "sweep":
                rows += sweep_section(model_dir, records, scale, scratch)
            elif section == "ddp":
                rows += ddp_section(model_dir, scale, scratch)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="the same sections, tiny and on the CPU (fp32)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    parser.add_argument(
        "--run-all",
        action="store_true",
        help="with --cpu-smoke: also run the sweep and DDP (minutes on a CPU; the e2e test does)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu-check.md")
    args = parser.parse_args(argv)
    sections = tuple(s for s in args.sections.split(",") if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing measured (--cpu-smoke runs the toy version)")
        return 0
    scale = CPU_SMOKE if args.cpu_smoke else GPU
    if args.run_all:
        scale = dataclasses.replace(scale, run_sections=SECTIONS)
    if args.cpu_smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    start = time.perf_counter()
    rows = run(scale, sections)
    table = markdown(rows, scale, time.perf_counter() - start)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 1 if any(r.get("check") is False for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
