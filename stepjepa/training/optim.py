"""Optimizer and learning-rate schedule of a training run, from `TrainConfig`."""

from __future__ import annotations

import math

import torch
from transformers import get_scheduler

from stepjepa.config import TrainConfig

# Our names -> transformers' schedule names (all three include the linear warmup).
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
# Where torch's fused AdamW kernel runs (torch.optim.adamw: cpu, cuda and others; these two tested).
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters.

    Biases, norm weights and embedding rows (predictor tokens included) get no weight
    decay: pulling them toward zero is not a useful prior and shrinks the new tokens.

    Fused (one kernel per step, as transformers' Trainer defaults to) where torch has the
    kernel: torch's default on the CPU is a per-parameter loop whose `sqrt(v) / c` makes
    two temporaries of each parameter's size, 1 GB at peak for Qwen2.5-0.5B's float32
    embedding (benchmarks/results/real-shape.md). Same update either way.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim < 2 or "embed" in name or "token_adapter" in name
        (no_decay if exempt else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    params = decay + no_decay
    fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for p in params)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.learning_rate, fused=fused or None)


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """`warmup_steps` when set, else `warmup_ratio` of the run, rounded up."""
    if cfg.warmup_steps is not None:
        return min(cfg.warmup_steps, total_steps)
    return math.ceil(cfg.warmup_ratio * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warmup, then `cfg.scheduler` decay over the remaining optimizer steps."""
    return get_scheduler(
        SCHEDULES[cfg.scheduler],
        optimizer,
        num_warmup_steps=warmup_steps(cfg, total_steps),
        num_training_steps=max(total_steps, 1),
    )
