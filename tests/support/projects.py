"""Project folders for tests that run the pipeline: a copy of the code for a real DVC repo,
or a prepared and tokenised folder the sweep flow can run in."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from tests.support.synthetic import TINY_TEST_MODEL

ROOT = Path(__file__).resolve().parents[2]

# The splits of a sweep project: which synthetic conversations each holds.
SWEEP_SPLITS = {"train": slice(0, 64), "validation": slice(90, 96), "test": slice(100, 106)}


def copy_project(repo: Path, validation_size: int, extra: tuple[str, ...] = ()) -> dict:
    """The project's code, dvc.yaml and params (tiny model, a small validation split) copied
    into `repo`, for a real DVC pipeline in a temporary git repository; returns the params."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in ["stepjepa", "pipelines", "dvc.yaml", ".dvcignore", *extra]:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, repo / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tiny_model"] = TINY_TEST_MODEL.model_dump()
    params["data"]["validation_size"] = validation_size
    return params


def make_sweep_project(root: Path, model_dir: Path, conversations: list[dict], sweep: dict) -> Path:
    """A project folder the sweep flow can run in: prepared and tokenised train, validation
    and test splits, and a params.yaml sized for seconds-long runs of the tiny model."""
    # Imported here: conftest imports this module before it sets HF_HUB_OFFLINE, which
    # huggingface_hub reads once, when transformers is first imported.
    from stepjepa.data.tokenization import encode_records, load_tokenizer

    (root / "data/tokenized").mkdir(parents=True)
    (root / "data/prepared").mkdir(parents=True)
    tokenizer = load_tokenizer(str(model_dir))
    for split, part in SWEEP_SPLITS.items():
        records = conversations[part]
        pq.write_table(encode_records(tokenizer, records, 256, "26 Jul 2024"), root / f"data/tokenized/{split}.parquet")
        with (root / f"data/prepared/{split}.jsonl").open("w") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
    params = {
        "model": {"name_or_path": str(model_dir)},
        "train": {
            "max_steps": 4,
            "batch_size": 4,
            "checkpoint_every": 2,
            "log_every": 1,
            "learning_rate": 1e-3,
            "eval_every": 2,
            "eval_examples": 4,
        },
        "eval": {"limit": 6, "max_new_tokens": 16, "batch_size": 6},
        "sweep": sweep,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


# The flow's paths in a project made by `make_sweep_project` (what dvc.yaml passes it).
PATHS = {
    "params_file": "params.yaml",
    "tokenized": "data/tokenized",
    "prepared": "data/prepared",
    "runs_dir": "runs/sweep",
    "report_dir": "metrics/sweep",
}
