"""`stepjepa.startup`: which processes start without the cyclic collector, and `resume`
turning it back on (frozen) only where `pause` turned it off."""

from __future__ import annotations

import gc

import pytest

from stepjepa import startup
from tests.support.collector import paused_collector

PY = "/venv/bin/python"


@pytest.mark.parametrize(
    "argv, heavy",
    [
        ([PY, "-m", "stepjepa.training.train", "--params", "p.yaml"], True),
        ([PY, "-u", "-m", "stepjepa.training.train"], True),  # as torch's launcher starts each rank
        ([PY, "-X", "importtime", "-m", "pipelines.sweep", "--help"], True),
        ([PY, "-m", "stepjepa.cli", "train", "--data", "x"], True),
        ([PY, "-m", "stepjepa.cli", "evaluate"], True),
        ([PY, "-m", "stepjepa.cli", "inspect"], True),
        ([PY, "/venv/bin/stepjepa", "evaluate", "--model", "m"], True),  # the console script
        ([PY, "-m", "pipelines.tokenize_data", "--params", "p.yaml"], True),
        ([PY, "-m", "pipelines.build_model"], True),
        ([PY, "-m", "pipelines.prepare"], False),
        ([PY, "-m", "stepjepa.cli", "score", "p.jsonl"], False),  # imports nothing heavy
        ([PY, "-m", "stepjepa.cli", "--help"], False),
        ([PY, "-m", "stepjepa.cli"], False),
        ([PY, "/venv/bin/stepjepa"], False),
        ([PY, "-m", "stepjepa.training.warm", "--socket", "s", "1", "--", PY], False),  # the client
        ([PY, "-c", "import stepjepa.training.train"], False),
        ([PY, "-m", "pytest", "-m", "stepjepa.training.train"], False),
        ([PY, "script.py", "train"], False),
        ([PY], False),
    ],
)
def test_which_processes_start_without_the_collector(argv, heavy):
    assert startup.imports_heavily(argv) is heavy


def test_resume_turns_on_and_freezes_only_what_pause_turned_off(monkeypatch):
    with paused_collector(monkeypatch) as freezes:
        assert not gc.isenabled()
        startup.resume(("json",))
        assert gc.isenabled() and freezes == [1]
        startup.resume()  # once only
        assert freezes == [1]
    startup.resume()  # never paused (a test, a notebook): the collector is left alone
    assert gc.isenabled() and freezes == [1]
