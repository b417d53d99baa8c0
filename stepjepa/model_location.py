"""Where `model.name_or_path` (or `--model-dir`) points, told without importing transformers.

A local folder, or a Hugging Face hub id read from the HF cache (or the hub). Importing
transformers costs seconds of CPU; a folder that does not exist, or a hub id that is not in
the cache while the hub is off (HF_HUB_OFFLINE=1), is known in a fraction of one from the
file system and huggingface_hub's cache lookup. Commands ask `missing_model` before they
load, so such a mistake is one line at once, not one line after the heavy imports.
"""

from __future__ import annotations

import re
from pathlib import Path

from stepjepa.config import ConfigError, ModelConfig

# A Hugging Face hub id: `name` or `org/name`, not a filesystem path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# A hub model whose cached snapshot has neither can load neither a model nor a tokenizer offline.
CACHE_MARKERS = ("config.json", "tokenizer_config.json")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub (and so transformers) read it."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


def model_file(name_or_path: str, filename: str, revision: str | None = None) -> Path | None:
    """`filename` of the model where transformers would find it without the network: in the
    local folder, or (a hub id, with the hub off) in the HF cache; None when it is not there,
    and for a hub id while the hub is on (its latest revision may differ from a cached one)."""
    if Path(name_or_path).is_dir():
        path = Path(name_or_path) / filename
        return path if path.is_file() else None
    if not HUB_ID.fullmatch(name_or_path) or not hub_offline():
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name_or_path, filename, revision=revision)
    except ValueError:  # an id huggingface_hub refuses (`a--b`): transformers will say so
        return None
    return Path(cached) if isinstance(cached, str) else None


def missing_model(name_or_path: str, revision: str | None = None) -> str | None:
    """Why the model cannot load, where that is plain without loading it: a path that is no
    folder, or a hub id with no cached snapshot while the hub is off. None: it may load, and
    transformers says if it does not."""
    path = Path(name_or_path)
    if path.is_dir():
        return None
    if not HUB_ID.fullmatch(name_or_path):
        return "not a folder" if path.exists() else "no such folder"
    if not hub_offline() or any(model_file(name_or_path, name, revision) for name in CACHE_MARKERS):
        return None
    from huggingface_hub import constants

    return f"no such folder, and not in the HF cache {constants.HF_HUB_CACHE} with HF_HUB_OFFLINE=1"


def not_loadable(cfg: ModelConfig, reason: OSError | str) -> ConfigError:
    """One line naming `model.name_or_path` and what to set, for `missing_model`'s reason or
    the error transformers raised (instead of its chained tracebacks); a hub id with
    HF_HUB_OFFLINE=1 and no cached copy is the usual cause."""
    hint = ""
    if HUB_ID.fullmatch(cfg.name_or_path) and not Path(cfg.name_or_path).exists():
        hint = (
            "; it is no local folder, so it is a hub id: with HF_HUB_OFFLINE=1 it must be in the HF cache "
            "(HF_HOME); set model.name_or_path to a local model folder, or run with HF_HUB_OFFLINE=0"
            if hub_offline()
            else "; it is no local folder, and the hub has no such model (or is unreachable)"
        )
    text = str(reason).strip()
    first = text.splitlines()[0] if text else type(reason).__name__
    return ConfigError(f"model.name_or_path={cfg.name_or_path}: cannot load ({first}){hint}")
