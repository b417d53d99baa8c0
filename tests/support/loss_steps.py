"""A few optimizer steps of `stepjepa.training.loop.optimizer_step` on fixed rows, split into
micro-batches and processes as a test says: for the loss-normalisation tests.

Rows of very different lengths (and JEPA pairs) make the micro-batches' label-token and
pair counts unequal, so averaging per-micro-batch means would train another objective.
Run as a module under `accelerate launch` (tests/training/test_loss_normalisation.py), each process
takes its share of every step and the main process saves the weights to `argv[1]`:

    ACCELERATE_USE_CPU=true python -m accelerate.commands.launch \
        --config_file configs/accelerate/cpu_2proc.yaml -m tests.support.loss_steps OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from stepjepa.config import TrainConfig, config_from_dict
from stepjepa.method.collate import Collator
from stepjepa.training.loop import StepModule, optimizer_step
from stepjepa.training.run import make_accelerator
from tests.support.tiny_llama import PRED, row, tiny_llama

STEPS = 3
K = 2


def step_rows(step: int) -> list[dict]:
    """Step `step`'s 8 rows: the first 4 short (one of them without a JEPA pair), the last 4
    ~6x longer, so batch [0..3] and batch [4..7] hold very different label-token counts."""
    rows = []
    for i in range(8):
        long = i >= 4
        body = 30 + 7 * i + 3 * step if long else 2 + i + step
        first = [20 + (i + step) % 50 + j for j in range(2 + i % 3)]
        second = [80 + (3 * i + step + j) % 60 for j in range(3 + i % 2)]
        rest = [150 + (5 * i + 7 * step + j) % 140 for j in range(body)]
        valid = i != 1
        rows.append(
            row(
                [10 + i, 11, 12 + step],
                first if valid else [],
                second if valid else [],
                rest if valid else first + second + rest,
            )
        )
    return rows


def config(**train) -> TrainConfig:
    return config_from_dict({"train": {"k": K, "lambda": 0.5, "loss": "cosine", "seed": 0} | train}).train


def run(splits: list[list[int]], tc: TrainConfig, *, lr: float = 0.5) -> tuple[dict, list[dict]]:
    """`STEPS` optimizer steps, step s on the micro-batches `splits` (indices into
    `step_rows(s)`, this process's share); plain SGD, so the weights show the gradient."""
    accelerator = make_accelerator(tc)
    model = tiny_llama("sdpa").train()
    collator = Collator(k=K, layout=tc.layout, predictor_ids=PRED[:K], pad_id=0, views=tc.views)
    step_module = accelerator.prepare_model(StepModule.from_config(model, tc))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    metrics = [
        optimizer_step(accelerator, step_module, optimizer, scheduler, splits, step_rows(s), collator, tc, s)
        for s in range(1, STEPS + 1)
    ]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, metrics


def main(out: Path) -> None:
    tc = config(lm_loss_chunk=16)  # the chunked LM head under DDP too (the test compares with unchunked)
    accelerator = make_accelerator(tc)
    rank, world = accelerator.process_index, accelerator.num_processes
    assert world == 2, f"expected 2 processes, got {world}"
    weights, metrics = run([[4 * rank + j for j in range(4)]], tc)
    if accelerator.is_main_process:
        torch.save(weights, out / "weights.pt")
        (out / "metrics.json").write_text(json.dumps(metrics))
    accelerator.end_training()  # else gloo can abort a process at exit


if __name__ == "__main__":
    main(Path(sys.argv[1]))
