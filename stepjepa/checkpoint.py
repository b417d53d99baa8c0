"""Resumable training checkpoints: save every N optimizer steps, keep the last few.

A checkpoint is a folder `OUT/checkpoints/step-000050/` holding

    trainable.safetensors   the parameters that train (all of them for full fine-tuning;
                            LoRA adapters and predictor-token rows under LoRA)
    optimizer.pt, scheduler.pt
    rng-<rank>.pt           Python / NumPy / torch RNG states of each process
    state.json              step, MLflow run id, resolved config: written last

It is assembled in a hidden temporary folder and renamed into place, so a run killed
mid-save leaves the previous checkpoint as the latest, never a half-written one.
Frozen base weights are not saved: a resume reloads them from `model.name_or_path`.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with `state.json`), oldest first."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed into this run (names the file)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters with `requires_grad`, detached and contiguous (safetensors needs that).

    `named_parameters` lists a tied tensor once, so tied input/output embeddings are
    saved once and safetensors does not refuse shared storage.
    """
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors, ints and lists, so it loads with `weights_only=True`."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**numpy_state, "state": {**numpy_state["state"], "key": numpy_state["state"]["key"].tolist()}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    key = np.asarray(numpy_state["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy_state, "state": {**numpy_state["state"], "key": key}})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    keep: int,
    rank: int = 0,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write checkpoint `step` (every process calls this; rank 0 writes the shared parts).

    `model` is the unwrapped model; `state` is JSON data stored in `state.json` together
    with the step. Older checkpoints beyond `keep` are deleted afterwards.
    """
    root = checkpoint_root(out_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a run killed while saving
        tmp.mkdir(parents=True)
    barrier()
    # Read back with `weights_only=True`: tensors and plain containers only, so a checkpoint
    # from a shared cache or DVC remote cannot run code when it is loaded.
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    if rank == 0:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    barrier()
    if rank == 0:
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        prune_checkpoints(out_dir, keep)
    barrier()
    return final


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest complete checkpoints."""
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(
    path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> dict[str, Any]:
    """Restore a checkpoint into `model` (unwrapped), optimizer, scheduler and RNGs.

    Returns the contents of `state.json`. Fails if the checkpoint's trainable parameters
    do not match the model's, which means the config changed between save and resume.
    """
    path = Path(path)
    saved = load_file(str(path / "trainable.safetensors"))
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:5], sorted(set(saved) - expected)[:5]
        raise CheckpointError(f"{path}: trainable parameters differ from the model's (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(_load_plain(path / "optimizer.pt"))
    scheduler.load_state_dict(_load_plain(path / "scheduler.pt"))
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():  # a resume on more processes than saved has no state for new ranks
        set_rng_state(_load_plain(rng_file))
    return json.loads((path / "state.json").read_text())


def _load_plain(file: Path) -> Any:
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{file}: holds objects other than tensors and plain containers (a checkpoint of an "
                         "older stepjepa, or not ours); not loaded, since unpickling can run code") from None
