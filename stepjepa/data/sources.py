"""Where the raw data comes from (`data.source`). GSM8K: the folder named by `GSM8K_DIR`,
else the Hugging Face hub; arith: generated here by stepjepa/data/arith.py.

The official files are copied byte for byte, so the file and line numbers in any later
error message are those of the official release.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from stepjepa.config import DataConfig

SPLITS = ("train", "test")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def local_dir() -> Path | None:
    """The folder named by GSM8K_DIR, checked to hold both splits."""
    value = os.environ.get("GSM8K_DIR")
    if not value:
        return None
    folder = Path(value).expanduser().resolve()
    missing = [f"{s}.jsonl" for s in SPLITS if not (folder / f"{s}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(f"GSM8K_DIR={value}: missing {', '.join(missing)} in {folder}")
    return folder


class SourceError(OSError):
    """GSM8K cannot be had: no GSM8K_DIR and no reachable hub; the message says what to set."""


def _from_hub(cfg: DataConfig, split: str, dest: Path) -> None:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise SourceError(
            f"GSM8K: GSM8K_DIR is not set and the hub is off (HF_HUB_OFFLINE=1), so {cfg.hub_dataset} cannot be "
            "downloaded: set GSM8K_DIR to a folder with the official train.jsonl and test.jsonl (make sets it to "
            "../shared/data/gsm8k when that exists), or allow the hub with HF_HUB_OFFLINE=0 (make run HF_HUB_OFFLINE=0)"
        )
    from datasets import load_dataset  # heavy: only on the hub path

    try:
        ds = load_dataset(cfg.hub_dataset, cfg.hub_config, split=split, revision=cfg.hub_revision)
    except (OSError, ConnectionError, ValueError) as err:
        raise SourceError(
            f"GSM8K: GSM8K_DIR is not set and {cfg.hub_dataset} could not be loaded from the hub "
            f"({str(err).splitlines()[0][:200]}): set GSM8K_DIR to a folder with train.jsonl and "
            "test.jsonl, or check the connection"
        ) from None
    with dest.open("w", encoding="utf-8") as fh:
        for row in ds:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def fetch_gsm8k(cfg: DataConfig, out_dir: Path) -> dict:
    """Write `train.jsonl` and `test.jsonl` to `out_dir`; return their provenance."""
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = local_dir()
    # Not the folder's absolute path: provenance must not differ between machines.
    source = "GSM8K_DIR" if folder else f"hf://{cfg.hub_dataset}/{cfg.hub_config}@{cfg.hub_revision or 'main'}"
    files = {}
    for split in SPLITS:
        dest = out_dir / f"{split}.jsonl"
        if folder:
            shutil.copyfile(folder / f"{split}.jsonl", dest)
        else:
            _from_hub(cfg, split, dest)
        files[split] = file_facts(dest)
    return {"source": source, "files": files}


def file_facts(path: Path) -> dict:
    """Line count and sha256 of a fetched file, for the provenance metrics."""
    with path.open("rb") as fh:
        lines = sum(1 for _ in fh)
    return {"lines": lines, "sha256": sha256(path)}


def fetch_arith(cfg: DataConfig, out_dir: Path) -> dict:
    """Generate the arith task's splits into `out_dir`; provenance records its params."""
    from stepjepa.data.arith import write_splits

    paths = write_splits(cfg.arith, out_dir)
    files = {split: file_facts(path) for split, path in paths.items()}
    return {"source": "arith", "arith": cfg.arith.model_dump(mode="json"), "files": files}


def fetch(cfg: DataConfig, out_dir: Path) -> dict:
    """The raw splits `data.source` names, written to `out_dir`; returns their provenance."""
    return fetch_arith(cfg, out_dir) if cfg.source == "arith" else fetch_gsm8k(cfg, out_dir)
