"""The optimizer-step loop of a run: micro-batches, accumulation, clipping, metrics,
checkpoints. `stepjepa.training.run` sets everything up and calls `run_steps`.

Every process runs the same steps on its own micro-batches (see `batching.step_plan`);
metrics are summed over processes before they are logged, and only the main process
logs (its tracker is real, the others' are no-ops).

An optimizer step's LM loss is the sum of its token losses over all micro-batches and
processes / its label tokens, and its JEPA loss the sum over its valid pairs / their
count (as transformers' `num_items_in_batch`): batch 8, batch 4 x accumulation 2 and
2 processes x batch 4 train the same objective. docs/loss-normalisation.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from stepjepa.config import TrainConfig
from stepjepa.method.batching import Plan
from stepjepa.method.collate import Collator, count_targets
from stepjepa.method.forward import LM_CHUNK, StepOutput, step_jepa_forward
from stepjepa.progress import Rate
from stepjepa.tracking import Tracker
from stepjepa.vocabulary import PAIR_COLUMNS, Layout, LossKind

log = logging.getLogger(__name__)

# Per-step sums reduced over processes, in this order: the loss (each micro-batch's share),
# summed token losses and their count, summed pair losses, cosines and their count, input tokens.
STATS = ("loss", "lm_sum", "lm_tokens", "jepa_sum", "cos_sum", "jepa_pairs", "tokens")


class TrainingError(RuntimeError):
    """The run cannot go on (a non-finite loss or gradient); the message names the step."""


class Stopped(Exception):
    """A stop was requested (SIGTERM/SIGINT): the run saved a checkpoint at `step` and ended."""

    def __init__(self, step: int, signum: int | None = None):
        super().__init__(f"stopped after step {step}")
        self.step, self.signum = step, signum


class StepModule(torch.nn.Module):
    """`step_jepa_forward` as a module's forward, so that accelerate can wrap it in DDP.

    DDP prepares gradient synchronisation in its own forward, and `step_jepa_forward`
    drives the decoder and LM head separately; wrapping this module (not the model) keeps
    both true. `model` is the plain (or PEFT) causal LM; the rest are the loss's settings.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layout: Layout,
        loss_kind: LossKind,
        gamma: float,
        lam: float,
        temperature: float,
        target_grad: bool,
        bf16: bool = False,
        lm_chunk: int | None = LM_CHUNK,
    ):
        super().__init__()
        self.model = model
        self.loss_args = dict(
            layout=layout,
            loss_kind=loss_kind,
            gamma=gamma,
            lam=lam,
            temperature=temperature,
            target_grad=target_grad,
            lm_chunk=lm_chunk,
        )
        self.bf16 = bf16

    @classmethod
    def from_config(cls, model: torch.nn.Module, tc: TrainConfig) -> StepModule:
        return cls(
            model,
            layout=tc.layout,
            loss_kind=tc.loss,
            gamma=tc.gamma,
            lam=tc.lambda_,
            temperature=tc.temperature,
            target_grad=tc.target_grad,
            bf16=tc.precision == "bf16",
            lm_chunk=tc.lm_loss_chunk,
        )

    def forward(
        self,
        batch: dict[str, torch.Tensor],
        apply_jepa: bool,
        lm_tokens: float | None = None,
        jepa_pairs: float | None = None,
    ) -> StepOutput:
        device_type = batch["input_ids"].device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.bf16):
            return step_jepa_forward(
                self.model, batch, apply_jepa=apply_jepa, lm_tokens=lm_tokens, jepa_pairs=jepa_pairs, **self.loss_args
            )


def jepa_draw(seed: int, step: int, ratio: float) -> bool:
    """Whether optimizer step `step` applies the JEPA loss (probability `ratio`; <= 0: always).

    Seeded by (seed, step) rather than a running generator, so every process and a
    resumed run make the same draw for the same step.
    """
    return ratio <= 0 or random.Random(f"{seed}-{step}").random() < ratio


def step_counts(accelerator: Accelerator, batches: list[list[dict]], pair_key: str, jepa: bool) -> tuple[float, float]:
    """The optimizer step's label tokens and JEPA pairs (0 when the step has no JEPA term),
    summed over its micro-batches (`batches`, lists of rows) and over processes."""
    local = [sum(count_targets(b) for b in batches), sum(bool(e[pair_key]) for b in batches for e in b) if jepa else 0]
    tokens, pairs = accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=accelerator.device), "sum")
    return float(tokens), float(pairs)


def optimizer_step(
    accelerator: Accelerator,
    step_module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: list[list[int]],
    rows: list[dict],
    collator: Collator,
    cfg: TrainConfig,
    step: int,
) -> dict[str, float]:
    """Forward/backward every micro-batch (laid out by `collator`), then clip and step.
    Returns the step's metrics.

    Each micro-batch back-propagates its summed token losses / the step's label tokens
    (over all micro-batches and processes) plus its summed pair losses / the step's
    pairs, times the number of processes since DDP averages gradients over them: the
    accumulated gradient is the gradient of the step's token- and pair-weighted loss.
    The JEPA draw is per step, so every micro-batch of a step has the JEPA term or none.
    """
    started = time.perf_counter()
    apply_jepa = jepa_draw(cfg.seed, step, cfg.jepa_ratio)
    batches = [[rows[j] for j in indices] for indices in micro_batches]
    n_tokens, n_pairs = step_counts(
        accelerator, batches, PAIR_COLUMNS[collator.views][2], apply_jepa and cfg.lambda_ != 0
    )
    sums = torch.zeros(len(STATS), dtype=torch.float64)
    for i, examples in enumerate(batches):
        batch = {key: value.to(accelerator.device) for key, value in collator(examples).items()}
        # Gradients are all-reduced once per optimizer step, on its last micro-batch.
        last = i == len(batches) - 1
        with contextlib.nullcontext() if last else accelerator.no_sync(step_module):
            out = step_module(batch, apply_jepa, max(n_tokens, 1.0), n_pairs or None)
            accelerator.backward(out.loss * accelerator.num_processes)
        sums += torch.tensor(_micro_stats(out, sum(len(e["input_ids"]) for e in examples)), dtype=torch.float64)
    totals = dict(zip(STATS, accelerator.reduce(sums.to(accelerator.device), "sum").tolist()))
    loss = totals["loss"]
    if not math.isfinite(loss):
        raise TrainingError(
            f"step {step}: the loss is {loss} (lm_loss sum {totals['lm_sum']}, jepa_loss sum "
            f"{totals['jepa_sum']}); stopping. Lower train.learning_rate or check the data."
        )
    if (totals["lm_tokens"], totals["jepa_pairs"]) != (n_tokens, n_pairs):  # the normalisers were wrong
        raise RuntimeError(
            f"step {step}: counted {n_tokens:g} label tokens and {n_pairs:g} pairs before the "
            f"forward passes, which saw {totals['lm_tokens']:g} and {totals['jepa_pairs']:g}"
        )
    grad_norm = float(accelerator.clip_grad_norm_(step_module.parameters(), cfg.max_grad_norm or math.inf))
    if not math.isfinite(grad_norm):
        raise TrainingError(f"step {step}: the gradient norm is {grad_norm}; stopping before the update.")
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    metrics = {
        "loss": loss,
        "lm_loss": totals["lm_sum"] / max(totals["lm_tokens"], 1.0),
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": totals["tokens"] / (time.perf_counter() - started),
        "jepa_pairs": totals["jepa_pairs"],
    }
    if totals["jepa_pairs"]:
        metrics["jepa_loss"] = totals["jepa_sum"] / totals["jepa_pairs"]
        metrics["mean_cos"] = totals["cos_sum"] / totals["jepa_pairs"]
    return metrics


def _micro_stats(out: StepOutput, tokens: int) -> list[float]:
    """One micro-batch's contribution to STATS; JEPA terms only when pairs entered the loss."""
    jepa = out.n_valid > 0 and out.mean_cos is not None
    return [
        out.loss.item(),
        out.lm_sum.item(),
        float(out.n_tokens),
        out.jepa_sum.item() if jepa else 0.0,
        out.mean_cos.item() * out.n_valid if jepa else 0.0,
        float(out.n_valid if jepa else 0),
        float(tokens),
    ]


def mean_metrics(window: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over the steps of a logging window that have it."""
    keys = {k for m in window for k in m}
    return {k: sum(m[k] for m in window if k in m) / sum(k in m for m in window) for k in sorted(keys)}


def _resume_history(path: Path, start: int) -> list[dict[str, float]]:
    """Logged steps up to the checkpoint; later lines (logged before a crash) are dropped."""
    if not path.is_file():
        return []
    kept = [m for m in map(json.loads, path.read_text().splitlines()) if m["step"] <= start]
    path.write_text("".join(json.dumps(m) + "\n" for m in kept))
    return kept


# Speed differs from machine to machine: it goes to the tracker, not into metrics.jsonl,
# so that a run folder holds the same bytes wherever the same run is trained.
TIMING = ("tokens_per_s",)


def run_steps(
    accelerator: Accelerator,
    step_module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    plan: Plan,
    rows: list[dict],
    collator: Collator,
    cfg: TrainConfig,
    *,
    start: int,
    tracker: Tracker,
    out: Path,
    save: Callable[[int, list[dict[str, float]]], None],
    window: list[dict[str, float]] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    probe: Callable[[], dict[str, float]] | None = None,
) -> list[dict[str, float]]:
    """Run optimizer steps `start + 1 .. len(plan)`; returns the logged metrics (main process).

    `save(step, window)` writes a checkpoint with the steps not yet logged; `window` is
    that list when resuming. When `should_stop()` turns true the run saves and raises `Stopped`.
    `probe` (main process) measures held-out metrics every `cfg.eval_every` steps and at the
    last step; they are logged with that step's training metrics.
    """
    main = accelerator.is_main_process
    history_file = out / "metrics.jsonl"
    history = _resume_history(history_file, start) if main else []
    window = list(window or [])
    step_module.train()  # from_pretrained returns models in eval mode
    bar = tqdm(total=len(plan), initial=start, desc="train", unit="step", disable=not main)
    rate = Rate(len(plan), start)
    for step in range(start + 1, len(plan) + 1):
        window.append(
            optimizer_step(accelerator, step_module, optimizer, scheduler, plan[step - 1], rows, collator, cfg, step)
        )
        bar.update()
        bar.set_postfix(loss=f"{window[-1]['loss']:.4f}")
        if step % cfg.log_every == 0 or step == len(plan):
            metrics = mean_metrics(window)
            window = []
            if probe is not None and main and (step % (cfg.eval_every or len(plan)) == 0 or step == len(plan)):
                step_module.eval()
                metrics |= probe()
                step_module.train()
            tracker.log_metrics(metrics, step)
            if main:
                history.append({"step": step, **{k: v for k, v in metrics.items() if k not in TIMING}})
                with history_file.open("a") as f:
                    f.write(json.dumps(history[-1]) + "\n")
                log.info(
                    "step %d/%d %s eta=%s",
                    step,
                    len(plan),
                    " ".join(f"{k}={v:.4g}" for k, v in metrics.items()),
                    rate.eta(step),
                )
        stopping = step < len(plan) and should_stop()
        if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            save(step, window)
        if stopping:
            bar.close()
            raise Stopped(step)
    bar.close()
    return history
