"""Shared fixtures: synthetic GSM8K-style records and a tiny model built from them.

Nothing here downloads: the model and tokenizer are built from configs, exactly as the
`build_model` stage builds the embedded default, only smaller.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import pytest

from stepjepa.config import DataConfig, TinyModelConfig
from stepjepa.launch import watch_descendants
from stepjepa.prepare import to_conversation
from stepjepa.steps import Solution

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps task caches under PREFECT_HOME: a test session must never see an earlier one.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="stepjepa-test-prefect-")
# Servers, deployments and runs the tests start die with pytest also when it is killed
# (a CI time-out's SIGKILL skips every fixture's clean-up): a watchdog outlives it to stop them.
watch_descendants(grace=10)

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina"]
ITEMS = ["clips", "apples", "pages", "dollars", "marbles", "cookies"]

TINY_TEST_MODEL = TinyModelConfig(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    seed=0,
)


def synthetic_raw_record(rng: random.Random, n_steps: int | None = None) -> dict:
    """A GSM8K-format record (`question`, `answer` with annotations and `####`)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, 60)
    question = f"{name} has {total} {item}. "
    lines = []
    for _ in range(n_steps if n_steps is not None else rng.randint(2, 5)):
        add = rng.randint(1, 40)
        question += f"Then {name} gets {add} more {item}. "
        lines.append(f"{name} now has {total}+{add} = <<{total}+{add}={total + add}>>{total + add} {item}.")
        total += add
    question += f"How many {item} does {name} have?"
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {total}"}


def synthetic_conversations(n: int, seed: int = 0) -> list[dict]:
    """Prepared records (docs/data-format.md) built from synthetic raw records."""
    from stepjepa.steps import split_record

    rng, cfg, out = random.Random(seed), DataConfig(), []
    for i in range(n):
        solution: Solution = split_record(synthetic_raw_record(rng))
        out.append({"id": f"train-{i + 1:06d}", "source": "synthetic", "line": i + 1} | to_conversation(solution, cfg))
    return out


@pytest.fixture(scope="session")
def conversations() -> list[dict]:
    return synthetic_conversations(200)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, conversations) -> Path:
    """A tiny Llama + byte-level BPE tokenizer with the ChatML template, saved as an HF dir."""
    from stepjepa.tiny_model import build_tiny_model, tokenizer_corpus

    return build_tiny_model(TINY_TEST_MODEL, tokenizer_corpus(conversations), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The official GSM8K files (GSM8K_DIR, else ../shared/data/gsm8k beside the project)."""
    candidates = [os.environ.get("GSM8K_DIR"), ROOT.parent / "shared" / "data" / "gsm8k"]
    for c in candidates:
        if c and (Path(c) / "train.jsonl").is_file():
            return Path(c)
    pytest.skip("GSM8K not available: set GSM8K_DIR to a folder with train.jsonl and test.jsonl")


def copy_project(repo: Path, validation_size: int, extra: tuple[str, ...] = ()) -> dict:
    """The project's code, dvc.yaml and params (tiny model, a small validation split) copied
    into `repo`, for a real DVC pipeline in a temporary git repository; returns the params."""
    import shutil

    import yaml

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


# The splits of a sweep project: which synthetic conversations each holds.
SWEEP_SPLITS = {"train": slice(0, 64), "validation": slice(90, 96), "test": slice(100, 106)}


def make_sweep_project(root: Path, model_dir: Path, conversations: list[dict], sweep: dict) -> Path:
    """A project folder the sweep flow can run in: prepared and tokenised train, validation
    and test splits, and a params.yaml sized for seconds-long runs of the tiny model."""
    import json

    import pyarrow.parquet as pq
    import yaml

    from stepjepa.tokenization import encode_records, load_tokenizer

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
        "train": {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "learning_rate": 1e-3,
                  "eval_every": 2, "eval_examples": 4},
        "eval": {"limit": 6, "max_new_tokens": 16, "batch_size": 6},
        "sweep": sweep,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root
