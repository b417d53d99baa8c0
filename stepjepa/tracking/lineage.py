"""What a run records about where it came from: its params as dotted keys, the code (git
and MLflow's Source fields) and the data (MLflow datasets with their md5, DVC's hashes, and
the origin the fetch stage recorded)."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path

import yaml

from stepjepa.config import flatten  # the params as dotted keys; lives beside the config
from stepjepa.tracking.store import PROJECT_ROOT

__all__ = ["dvc_tags", "file_dataset", "flatten", "git_tags", "pipeline_outputs", "recorded_source", "source_tags"]


def recorded_source(data: Path) -> str | None:
    """Where the raw data under `data` came from, as the fetch stage recorded it: the
    `source` of the nearest `metrics/fetch.json` above it (`GSM8K_DIR`, an `hf://` id,
    `arith`); None when no fetch stage ran there (data made by hand, tests)."""
    for folder in Path(data).resolve().parents:
        facts = folder / "metrics" / "fetch.json"
        if facts.is_file():
            return json.loads(facts.read_text()).get("source")
    return None


def git_tags(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit the code came from, and whether tracked files other than the pipeline's own
    outputs had local changes (`pipeline_outputs`): every run of a fresh clone's `make run`
    was dirty, since DVC rewrites dvc.lock as each stage ends. Untracked files do not count,
    as in `git describe --dirty`."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    excluded = [f":(exclude){path}" for path in pipeline_outputs(root)]
    try:
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *excluded)
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(changed))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def pipeline_outputs(root: Path = PROJECT_ROOT) -> list[str]:
    """dvc.lock and the outs, metrics and plots of dvc.yaml's stages: what the pipeline itself
    writes into a checkout (committed ones included: dvc.lock, metrics/)."""
    try:
        stages = (yaml.safe_load((root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return []
    paths = ["dvc.lock"]
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            paths += [entry if isinstance(entry, str) else next(iter(entry)) for entry in stage.get(kind) or []]
    return paths


def source_tags(entry: Path, root: Path = PROJECT_ROOT) -> dict[str, str]:
    """MLflow's own source fields (the runs table's Source column): the entry point, and the
    commit, branch and remote it came from. A run started through `MLFLOW_RUN_ID` or created
    by a sweep gets none of these from MLflow itself."""
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH,
        MLFLOW_GIT_COMMIT,
        MLFLOW_GIT_REPO_URL,
        MLFLOW_SOURCE_NAME,
        MLFLOW_SOURCE_TYPE,
    )

    tags = {MLFLOW_SOURCE_NAME: str(entry), MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    for key, args in (
        (MLFLOW_GIT_COMMIT, ("rev-parse", "HEAD")),
        (MLFLOW_GIT_BRANCH, ("rev-parse", "--abbrev-ref", "HEAD")),
        (MLFLOW_GIT_REPO_URL, ("config", "--get", "remote.origin.url")),
    ):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            if value := git(*args):
                tags[key] = value
    return tags


def file_dataset(path: Path):
    """An MLflow dataset for a data file: its name, its local path as the source and the md5
    of its bytes as the digest (the hash DVC keeps the file under in its cache)."""
    import hashlib

    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset

    path = Path(path).resolve()
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    # MLflow makes its local-file source class at import time (no importable name).
    local = next(cls for cls in get_registered_sources() if cls._get_source_type() == "local")
    return MetaDataset(local(str(path)), name=f"{path.parent.name}/{path.name}", digest=digest.hexdigest())


def dvc_tags(paths: list[str | Path], root: Path = PROJECT_ROOT) -> dict[str, str]:
    """DVC hashes (from dvc.lock) of the outputs that hold `paths`: which data trained the run.

    A path matches an output that is the path itself or a folder above it (DVC tracks
    `data/tokenized` as one directory output with a `.dir` hash).
    """
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    tags: dict[str, str] = {}
    for path in paths:
        try:
            rel = Path(path).resolve().relative_to(root.resolve())
        except ValueError:
            continue  # outside the project: DVC does not know it
        for stage, body in stages.items():
            for out in body.get("outs", []):
                out_path = Path(out["path"])
                if rel == out_path or out_path in rel.parents:
                    tags[f"dvc.{out['path']}"] = f"{out.get('md5') or out.get('hash')} (stage {stage})"
    return tags
