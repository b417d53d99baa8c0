"""`stepjepa COMMAND ...`: one console script, one module per command.

Each command module exposes `main(argv: list[str]) -> int`; modules are imported only
when their command runs, so `stepjepa score` does not pay for importing torch.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("stepjepa.training.train", "Train one Step-JEPA (or SFT) run"),
    "inspect": ("stepjepa.method.layout_view", "Show layout, mask and view positions of an example"),
    "evaluate": ("stepjepa.evaluation.evaluate", "GSM8K accuracy of a model directory"),
    "score": ("stepjepa.evaluation.score", "Re-score saved completions without a model"),
    "resend": ("stepjepa.training.resend", "Send to MLflow what a run folder holds and MLflow lacks"),
    "compare": (
        "stepjepa.sweep.compare",
        "Check a sweep's verdicts against a committed result (exit 1 if any changed)",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {doc}" for name, (_, doc) in COMMANDS.items())
    return (
        f"usage: stepjepa COMMAND [ARGS...] | --version\n\ncommands:\n{rows}\n\n"
        "`stepjepa COMMAND --help` for a command's arguments."
    )


def _version() -> str:
    try:
        return version("stepjepa")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        print(f"stepjepa {_version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"stepjepa: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except BrokenPipeError:
        # `stepjepa inspect ... | head` closed the pipe: not an error. Point stdout at devnull
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a command killed by SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
