"""What a new user asks the CLI first: `stepjepa --version`, and which keys `train --set` takes."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from stepjepa import cli
from stepjepa.config import Config, resolved_tree
from stepjepa.tracking import flatten


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag, capsys) -> None:
    assert cli.main([flag]) == 0
    assert capsys.readouterr().out.strip() == f"stepjepa {version('stepjepa')}"


def test_usage_mentions_version(capsys) -> None:
    assert cli.main(["--help"]) == 0 and "--version" in capsys.readouterr().out


def test_train_help_lists_every_key_set_accepts(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    listed: dict[str, list[str]] = {}
    for line in text[text.index("--set accepts") :].splitlines()[2:]:
        if not line.startswith("    "):  # "  section: a, b," starts a section; wrapped lines are indented more
            section, _, line = line.strip().partition(": ")
            listed[section] = []
        listed[section] += [name for name in line.strip().split(", ") if name]
    keys = [f"{section}.{name.rstrip(',')}" for section, names in listed.items() for name in names]
    assert keys == list(flatten(resolved_tree(Config())))
    assert listed["train"][:3] == ["k", "lambda", "gamma"]
