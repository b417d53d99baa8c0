"""Resumable training checkpoints: save every N optimizer steps, keep the last few.

A checkpoint is a folder `OUT/checkpoints/step-000050/` holding

    trainable.safetensors   the parameters that train (all of them for full fine-tuning;
                            LoRA adapters and predictor-token rows under LoRA)
    optimizer.pt, scheduler.pt
    rng-<rank>.pt           Python / NumPy / torch RNG states of each process
    state.json              step, MLflow run id, resolved config, the open logging window
    manifest.json           size and sha256 of every other file: written last

It is assembled in a hidden temporary folder and renamed into place, so a run killed
mid-save leaves the previous checkpoint as the latest, never a half-written one. Resume
verifies the manifest and falls back to the newest checkpoint that passes, naming each
one it skips (a truncated file, a missing RNG state, a disk that flipped bits).
Frozen base weights are not saved: a resume reloads them from `model.name_or_path`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as dump_safetensors

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoint folders (`step-N`), oldest first; `verify` says which are whole."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest checkpoint whose files match its manifest; each newer one that does
    not is named in a warning (and left in place for a post-mortem)."""
    for path in reversed(list_checkpoints(out_dir)):
        problem = verify(path)
        if problem is None:
            return path
        log.warning("skipping checkpoint %s: %s", path, problem)
    return None


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, or resumed into this run (names the file)."""


def verify(path: Path) -> str | None:
    """Why checkpoint `path` is not whole (a file missing, cut short or changed), or None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST} (the save did not finish, or an older stepjepa wrote it)"
    except (OSError, ValueError) as err:
        return f"{path / MANIFEST} is unreadable ({err})"
    for name, expected in manifest["files"].items():
        file = path / name
        try:
            data = file.read_bytes()
        except OSError as err:
            return f"{file}: {err.strerror or err}"
        if len(data) != expected["size"]:
            return f"{file}: {len(data)} bytes, the manifest says {expected['size']} (truncated?)"
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            return f"{file}: its sha256 differs from the manifest's (corrupted)"
    return None


def write_file(path: Path, data: bytes) -> dict[str, Any]:
    """Write `data` to `path` (fsync'd); an OS error is a CheckpointError naming the path and
    the OS reason ("No space left on device"). Returns the manifest entry."""
    try:
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise CheckpointError(f"{path}: could not write it: {err.strerror or err}") from None
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _torch_bytes(obj: Any) -> bytes:
    # Serialised in memory and written by Python: torch's own writer reports a full disk
    # as "basic_ios::clear: iostream error", with no path and no reason.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


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
    with the step. Older checkpoints beyond `keep` are deleted afterwards. A failed write
    (a full disk) removes the temporary folder and raises `CheckpointError`.
    """
    root = checkpoint_root(out_dir)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a run killed while saving
        tmp.mkdir(parents=True)
    barrier()
    try:
        # Read back with `weights_only=True`: tensors and plain containers only, so a checkpoint
        # from a shared cache or DVC remote cannot run code when it is loaded.
        files = {f"rng-{rank}.pt": write_file(tmp / f"rng-{rank}.pt", _torch_bytes(rng_state()))}
        if rank == 0:
            files |= {
                "trainable.safetensors": write_file(
                    tmp / "trainable.safetensors", dump_safetensors(trainable_state(model))
                ),
                "optimizer.pt": write_file(tmp / "optimizer.pt", _torch_bytes(optimizer.state_dict())),
                "scheduler.pt": write_file(tmp / "scheduler.pt", _torch_bytes(scheduler.state_dict())),
            }
        barrier()
        if rank == 0:
            files |= {f"rng-{r}.pt": _entry(tmp / f"rng-{r}.pt") for r in range(1, _ranks(tmp))}
            files["state.json"] = write_file(tmp / "state.json", json.dumps({"step": step, **state}, indent=2).encode())
            write_file(tmp / MANIFEST, json.dumps({"step": step, "files": files}, indent=2).encode())
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            prune_checkpoints(out_dir, keep)
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return final


def _ranks(folder: Path) -> int:
    return len(list(folder.glob("rng-*.pt")))


def _entry(file: Path) -> dict[str, Any]:
    data = file.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints."""
    for old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old)


def load_checkpoint(
    path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, rank: int = 0
) -> dict[str, Any]:
    """Restore a checkpoint into `model` (unwrapped), optimizer, scheduler and RNGs.

    Returns the contents of `state.json`. Fails if the checkpoint's trainable parameters
    do not match the model's, which means the config changed between save and resume;
    every unreadable file is a `CheckpointError` naming it.
    """
    path = Path(path)
    weights = path / "trainable.safetensors"
    try:
        saved = load_safetensors(weights.read_bytes())
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{weights}: unreadable ({err})") from None
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(saved) != expected:
        missing, extra = sorted(expected - set(saved))[:5], sorted(set(saved) - expected)[:5]
        raise CheckpointError(
            f"{path}: trainable parameters differ from the model's (missing {missing}, unexpected {extra})"
        )
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(_load_plain(path / "optimizer.pt"))
    scheduler.load_state_dict(_load_plain(path / "scheduler.pt"))
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(_load_plain(rng_file))
    else:  # a resume on more processes than saved: the new ranks start from the seed
        log.warning("%s: no RNG state for process %d; it continues from the seeded state", path, rank)
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / 'state.json'}: unreadable ({err})") from None


def _load_plain(file: Path) -> Any:
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file}: holds objects other than tensors and plain containers (a checkpoint of an "
            "older stepjepa, or not ours); not loaded, since unpickling can run code"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
