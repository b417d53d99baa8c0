"""Shared fixtures: synthetic GSM8K-style records, a tiny model built from them, tiny random
Llamas, one torch thread. Helpers (plain functions) live in tests/support/.

Nothing here downloads: the model and tokenizer are built from configs, exactly as the
`build_model` stage builds the embedded default, only smaller.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import tempfile
from pathlib import Path

# One intra-op thread in this process and every process a test starts (accelerate launch
# passes OMP_NUM_THREADS on): the tiny models gain nothing from more, and on 2 cores shared by
# pytest-xdist workers, OpenMP threads spin-waiting on each other made the same training
# ~3x slower (tests/e2e/test_method_regression.py's SFT test beside other workers: 147 s with
# two threads, 55 s with one).
# Set before torch is first imported, which reads it once.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Collection imports torch, transformers, MLflow and Prefect: ~1M objects that live for the
# session. With the cyclic collector off until collection ends, and those objects frozen
# after it, no full collection walks them again.
gc.disable()

import pytest  # noqa: E402

pytest_plugins = ["tests.support.cpu_usage"]

from stepjepa.training.launch import watch_descendants  # noqa: E402
from tests.support.projects import ROOT  # noqa: E402
from tests.support.synthetic import TINY_TEST_MODEL, synthetic_conversations  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect keeps task caches under PREFECT_HOME: a test session must never see an earlier one.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="stepjepa-test-prefect-")
# tests/e2e/test_faults_sweep.py sends Ctrl-C to a sweep it starts: started from a shell's
# background job (`make test &`), pytest and all it starts would ignore SIGINT instead.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Servers, deployments and runs the tests start die with pytest also when it is killed
# (a CI time-out's SIGKILL skips every fixture's clean-up): a watchdog outlives it to stop them.
watch_descendants(grace=10)


@pytest.fixture(scope="session")
def conversations() -> list[dict]:
    return synthetic_conversations(200)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, conversations) -> Path:
    """A tiny Llama + byte-level BPE tokenizer with the ChatML template, saved as an HF dir."""
    from stepjepa.model.tiny_model import build_tiny_model, tokenizer_corpus

    return build_tiny_model(TINY_TEST_MODEL, tokenizer_corpus(conversations), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The official GSM8K files (GSM8K_DIR, else ../shared/data/gsm8k beside the project)."""
    candidates = [os.environ.get("GSM8K_DIR"), ROOT.parent / "shared" / "data" / "gsm8k"]
    for c in candidates:
        if c and (Path(c) / "train.jsonl").is_file():
            return Path(c)
    pytest.skip("GSM8K not available: set GSM8K_DIR to a folder with train.jsonl and test.jsonl")


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request):
    """A tiny random Llama (tests/support/tiny_llama.py), once per attention implementation."""
    from tests.support.tiny_llama import tiny_llama

    return tiny_llama(request.param)


def _session_folder(tmp_path_factory) -> Path:
    """This session's temporary folder, beside every pytest-xdist worker's: where the migrated
    templates are made once for all of them."""
    shared = tmp_path_factory.getbasetemp()
    return shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared


@pytest.fixture(scope="session")
def migrated_prefect(tmp_path_factory):
    """`migrated(home)`: `home` as a `PREFECT_HOME` with a migrated database, for the tests
    whose Prefect server (or a sweep's temporary one) is not what they test. The first start
    on a new home, migrations included, stays covered: the fresh-clone author's `make run`."""
    from tests.support.servers import migrated_prefect_db, prefect_home

    template = migrated_prefect_db(_session_folder(tmp_path_factory))
    return lambda home: prefect_home(home, template)


@pytest.fixture(scope="session")
def migrated_mlflow(tmp_path_factory):
    """`store(path)`: `sqlite:///path`, an MLflow store whose database is a copy of one migrated
    once per session, for the tests whose store's creation is not what they test. A new
    store's creation, migrations included, stays covered: runs starting together on a fresh
    store (e2e/test_faults_processes.py) and the fresh clones' `make run`."""
    from tests.support.servers import migrated_mlflow_db, mlflow_store

    template = migrated_mlflow_db(_session_folder(tmp_path_factory))
    return lambda path: mlflow_store(path, template)


@pytest.fixture(scope="module")
def environment(project, migrated_prefect, migrated_mlflow, tmp_path_factory):
    """The requesting module's `project` folder as the working directory, with its own MLflow
    store and a Prefect test harness (the sweep-flow tests)."""
    from unittest import mock

    from prefect.testing.utilities import prefect_test_harness

    # The harness's server starts on a copy of the session's migrated database, not a new
    # one it would spend ~7-15 CPU-s migrating: the harness makes its folder with mkdtemp
    # and names its database prefect-test.db in it.
    folder = Path(migrated_prefect(tmp_path_factory.mktemp("prefect-harness")))
    (folder / "prefect.db").rename(folder / "prefect-test.db")
    saved = dict(os.environ)
    os.environ["MLFLOW_TRACKING_URI"] = migrated_mlflow(project / "mlflow.db")
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with contextlib.ExitStack() as stack:
            with mock.patch("prefect.testing.utilities.mkdtemp", return_value=str(folder)):
                stack.enter_context(prefect_test_harness(server_startup_timeout=90))
            yield project
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


# What a run of the pipeline leaves in a project; a test's belongs in its temporary folder.
# (A test whose MLflow experiment had the default artifact root wrote ./mlruns into the checkout.)
CHECKOUT_OUTPUTS = ("mlruns", "mlartifacts", "mlflow.db", "runs", ".prefect")
_OUTPUTS_BEFORE = pytest.StashKey[set]()


def pytest_sessionstart(session):
    session.config.stash[_OUTPUTS_BEFORE] = {name for name in CHECKOUT_OUTPUTS if (ROOT / name).exists()}


def pytest_sessionfinish(session, exitstatus):
    """The suite fails when it leaves a pipeline output in the checkout that was not there
    before (checked once, by pytest-xdist's controller or the only process)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    new = [name for name in CHECKOUT_OUTPUTS if (ROOT / name).exists()]
    new = sorted(set(new) - session.config.stash[_OUTPUTS_BEFORE])
    if new:
        print(f"\nthe tests wrote {', '.join(new)} into the checkout {ROOT}: a test's outputs go to its tmp_path")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_finish(session):
    gc.enable()
    gc.freeze()


def pytest_collection_modifyitems(items):
    """Longest first: modules that run servers and training, then those that start processes,
    then in-process ones. Under pytest-xdist (`make test`) the long tests start early and the
    quick ones fill the gaps. A module stays in one piece (its module fixtures are made once)
    and keeps its order."""

    def tier(item) -> int:
        marks = {m.name for m in item.iter_markers()}
        return (
            0
            if {"e2e", "server"} <= marks
            else 1
            if "e2e" in marks
            else 2
            if "server" in marks
            else 3
            if "cli" in marks
            else 4
        )

    module_tier: dict[str, int] = {}
    for item in items:
        module_tier[item.module.__name__] = min(module_tier.get(item.module.__name__, 4), tier(item))
    items.sort(key=lambda item: module_tier[item.module.__name__])
