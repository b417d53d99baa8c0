"""stepjepa/training/optim.py: the AdamW of a run is fused where torch has the kernel, which takes no
parameter-sized temporaries (torch's CPU default loop takes two per parameter: 1 GB at
Qwen2.5-0.5B's embedding, benchmarks/results/real-shape.md), and updates as the loop does."""

from __future__ import annotations

import copy

import torch

from stepjepa.config import TrainConfig
from stepjepa.training.optim import build_optimizer


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1]) / 1024


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(64, 8), torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))


def test_cpu_float_parameters_get_the_fused_kernel() -> None:
    optimizer = build_optimizer(_model(), TrainConfig(learning_rate=1e-3, weight_decay=0.1))
    assert optimizer.defaults["fused"] is True
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_fused_steps_equal_the_loop_of_torchs_default() -> None:
    fused_model, cfg = _model(), TrainConfig(learning_rate=1e-2, weight_decay=0.1)
    loop_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, cfg)
    twin = dict(zip((id(p) for p in fused_model.parameters()), loop_model.parameters()))
    loop = torch.optim.AdamW(
        [{"params": [twin[id(p)] for p in g["params"]], "weight_decay": g["weight_decay"]} for g in fused.param_groups],
        lr=cfg.learning_rate,
        foreach=False,
        fused=False,
    )
    tokens = torch.randint(0, 64, (4, 5))
    for _ in range(3):
        for model, optimizer in ((fused_model, fused), (loop_model, loop)):
            model(tokens).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_a_step_takes_no_parameter_sized_temporary() -> None:
    torch.manual_seed(0)
    model = torch.nn.Embedding(16 * 1024, 1024)  # 64 MiB: above glibc's mmap threshold, so RSS shows it
    model.weight.grad = torch.randn_like(model.weight)
    optimizer = build_optimizer(model, TrainConfig(learning_rate=1e-3))
    optimizer.step()  # the first step allocates the two state tensors
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset this process's peak RSS to its current RSS
    base = _rss_mib("VmRSS")
    optimizer.step()
    assert _rss_mib("VmHWM") - base < 32  # the loop: two 64 MiB temporaries
