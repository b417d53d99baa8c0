"""pipelines/_io.py in-process: what is not bad input keeps its traceback (the stages'
one-line errors, as a process prints them, are in test_cli_errors.py)."""

from __future__ import annotations

import pytest

from pipelines._io import run_stage


def test_a_bug_in_a_stage_keeps_its_traceback():
    def buggy() -> None:
        raise KeyError("messages")

    with pytest.raises(KeyError):
        run_stage("build_model", buggy)
