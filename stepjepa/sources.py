"""Where GSM8K comes from: the folder named by `GSM8K_DIR`, else the Hugging Face hub.

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


def _from_hub(cfg: DataConfig, split: str, dest: Path) -> None:
    from datasets import load_dataset  # heavy: only on the hub path

    ds = load_dataset(cfg.hub_dataset, cfg.hub_config, split=split, revision=cfg.hub_revision)
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
        with dest.open("rb") as fh:
            lines = sum(1 for _ in fh)
        files[split] = {"lines": lines, "sha256": sha256(dest)}
    return {"source": source, "files": files}
