"""What a new user meets first: the hints of the README, the docs and the Makefile, the
Prefect form, and a fresh run's log."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_every_readme_or_sweeps_page_command_that_starts_prefect_turns_its_telemetry_off():
    starts = re.compile(r"^\s*(prefect |python -m pipelines\.sweep)", re.M)
    pages = [ROOT / "README.md", ROOT / "docs" / "sweeps.md"]  # the quick start, and sweeps from the Prefect UI
    blocks = [b for page in pages for b in _bash_blocks(page.read_text()) if starts.search(b)]
    assert len(blocks) >= 2
    for block in blocks:
        first = starts.search(block).start()
        assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in block[:first], block


@pytest.mark.cli  # runs make -n
def test_readme_and_make_install_say_how_to_reach_the_commands():
    readme = (ROOT / "README.md").read_text()
    assert ".venv/bin/stepjepa" in readme and "command not found" in readme
    # As a user's shell runs it: under `make test` the inherited MAKELEVEL would make this
    # make print "Leaving directory" after the recipe.
    shell = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    recipe = subprocess.run(
        ["make", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True, check=True, env=shell
    ).stdout
    assert "source .venv/bin/activate" in recipe.splitlines()[-1]


def test_a_fresh_run_with_resume_warns_about_nothing(tmp_path, caplog):
    from stepjepa.training.run import _checkpoint_to_resume

    with caplog.at_level(logging.INFO, logger="stepjepa.training.run"):
        assert _checkpoint_to_resume(tmp_path / "run", resume=True) is None
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "starting at step 0" in caplog.text


def test_the_prefect_form_describes_every_sweep_parameter():
    from pipelines.sweep import step_jepa_sweep

    form = step_jepa_sweep.parameters
    properties = form.properties
    assert set(properties) >= {"sweep", "params_file", "tokenized", "prepared", "runs_dir", "report_dir"}
    missing = [name for name, schema in properties.items() if not schema.get("description")]
    assert missing == []
    # The form's fields inside `sweep`: each says what it means and its default.
    fields = form.definitions["SweepChoices"]["properties"]
    assert set(fields) >= {
        "ks",
        "lambdas",
        "seeds",
        "layout",
        "loss",
        "views",
        "overrides",
        "max_concurrent",
        "retries",
        "launcher",
        "axes",
        "design",
    }
    undocumented = [name for name, field in fields.items() if not field.get("description", "").split("Empty:")[0]]
    assert undocumented == []
    assert all("(default " in field["description"] for field in fields.values())
    assert "default [1, 2, 3]" in fields["ks"]["description"]
