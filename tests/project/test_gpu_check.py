"""`make gpu-check` (benchmarks/gpu_check.py) kept from rotting on machines without a GPU:
its CPU smoke runs the same section functions at toy size, and without CUDA the real
command says so in one line and exits 0."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the whole check")
def test_without_cuda_it_says_so_in_one_line_and_exits_0(tmp_path, capsys) -> None:
    gpu_check = load_gpu_check()
    assert gpu_check.main(["--out", str(tmp_path / "table.md")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA device" in out
    assert not (tmp_path / "table.md").exists()


def test_the_gpu_scale_is_qwen25_05b() -> None:
    gpu_check = load_gpu_check()
    gpu = gpu_check.GPU
    assert gpu.shape is gpu_check.QWEN25_05B and gpu.device == "cuda" and gpu.bf16
    assert gpu.batch_size == 4 and gpu.prompts == 256 and set(gpu.run_sections) == set(gpu_check.SECTIONS)
    assert {
        key: gpu.shape[key]
        for key in (
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
        )
    } == {
        "num_hidden_layers": 24,
        "hidden_size": 896,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
    }


@pytest.mark.cli
def test_cpu_smoke_runs_every_section(gsm8k_dir, tmp_path) -> None:
    out = tmp_path / "gpu-check.md"
    env = dict(os.environ) | {"PYTHONPATH": str(ROOT), "GSM8K_DIR": str(gsm8k_dir), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    table = out.read_text()
    assert table in done.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in rows]
    sections = {c[0] for c in cells}
    assert sections == {"steps", "trl", "generation", "sweep", "ddp"}
    steps = {(c[1], c[2]): c for c in cells if c[0] == "steps"}
    assert set(steps) == {(v, a) for v in ("sft", "inline", "packed") for a in ("sdpa", "flex_attention")}
    for variant in ("sft", "inline", "packed"):
        assert steps[variant, "sdpa"][3] != "-", "sdpa steps are timed"
        assert steps[variant, "flex_attention"][5] == "ok", "flex's forward loss matches sdpa's"
    assert [c[5] for c in cells if c[0] == "generation"] == ["ok", "ok"], "ours and generate agree"
    trl = [c for c in cells if c[0] == "trl"]
    try:
        import trl as _  # noqa: F401

        assert [c[1] for c in trl] == ["trl_sft", "sft", "jepa_inline", "jepa_packed"]
    except ImportError:
        assert "skipped: trl not installed" in trl[0][6]
    assert "**FAILED**" not in table


@pytest.mark.parametrize("variant", ["sft", "inline", "packed"])
def test_attention_agreement_compares_losses_and_gradients(variant: str) -> None:
    """The GPU check's gradient comparison, run here on sdpa against eager (both have a
    backward on the CPU); flex against sdpa is forward only on the CPU."""
    from tests.support.tiny_llama import PRED, ROWS, tiny_llama

    gpu_check = load_gpu_check()
    model = tiny_llama("sdpa").train()
    both = gpu_check.attention_agreement(model, ROWS, variant, PRED, 0, gpu_check.CPU_SMOKE, pair=("sdpa", "eager"))
    assert both["ok"] and both["grad_rel_diff"] < 1e-5 and both["loss_rel_diff"] < 1e-6
    flex = gpu_check.attention_agreement(model, ROWS, variant, PRED, 0, gpu_check.CPU_SMOKE)
    assert flex["ok"] and "grad_rel_diff" not in flex
    assert model.config._attn_implementation == "sdpa" and all(p.grad is None for p in model.parameters())
