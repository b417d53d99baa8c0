"""Shared fixtures: synthetic GSM8K-style records, a tiny model built from them, tiny random
Llamas, one torch thread. Helpers (plain functions) live in tests/support/.

Nothing here downloads: the model and tokenizer are built from configs, exactly as the
`build_model` stage builds the embedded default, only smaller.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from stepjepa.launch import watch_descendants
from tests.support.projects import ROOT
from tests.support.synthetic import TINY_TEST_MODEL, synthetic_conversations

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps task caches under PREFECT_HOME: a test session must never see an earlier one.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="stepjepa-test-prefect-")
# Servers, deployments and runs the tests start die with pytest also when it is killed
# (a CI time-out's SIGKILL skips every fixture's clean-up): a watchdog outlives it to stop them.
watch_descendants(grace=10)


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls gain nothing from intra-op threads; on a busy 2-core machine OpenMP
    threads waiting on each other made them 4x to 20x slower. Opt in per module with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    """A tiny random Llama (tests/support/tiny_llama.py), once per attention implementation."""
    from tests.support.tiny_llama import tiny_llama

    return tiny_llama(request.param)


@pytest.fixture(scope="module")
def environment(project):
    """The requesting module's `project` folder as the working directory, with its own MLflow
    store and a Prefect test harness (the sweep-flow tests)."""
    from prefect.testing.utilities import prefect_test_harness

    saved = dict(os.environ)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with prefect_test_harness(server_startup_timeout=90):
            yield project
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)
