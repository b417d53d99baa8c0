"""The cyclic garbage collector while a process imports torch, transformers, MLflow or Prefect.

Those imports make over a million objects that live as long as the process. With the
collector on, each of its full collections walks them all again: while they are imported
and after (~20% of a tiny run's CPU). Measured per process on 2 cores (CPU-s, median of 3,
on then off): the warm server's `PRELOAD` 6.1 vs 5.4; `stepjepa inspect` on the tiny model
4.5 vs 3.2; `stepjepa evaluate` of 2 examples 5.7 vs 4.4; `import pipelines.sweep` 1.85 vs
1.75. So a process that starts by importing them has the collector off from its first
import of stepjepa (`pause`, from stepjepa/__init__.py, for the commands `imports_heavily`
names) until they are done; then `resume` turns it on again with them frozen, and no full
collection walks them again. Importing stepjepa in any other way (a test, a notebook,
`python -c`) leaves it alone.
"""

from __future__ import annotations

import gc
import importlib
import os

# `python -m MODULE` processes that import torch and co. as they start: every training run
# and sweep, the DVC stages that load a tokenizer or build a model, and the console script's
# commands that load a model or tokenizer (`-m stepjepa.cli COMMAND` or `stepjepa COMMAND`).
# Their `resume` comes once the command is checked and its imports are done
# (`stepjepa.training.train.main`, `launch.process_main`, the others once their model or
# tokenizer is in); `--help` and a refused command exit with it still off.
HEAVY_MODULES = ("stepjepa.training.train", "pipelines.sweep", "pipelines.tokenize_data", "pipelines.build_model")
HEAVY_COMMANDS = ("train", "evaluate", "inspect")
# Interpreter options that take a value (`python -X importtime -m ...`).
OPTIONS_WITH_VALUE = ("-X", "-W")

_paused = False  # whether `pause` turned the collector off and `resume` has not yet turned it on


def imports_heavily(argv: list[str]) -> bool:
    """Whether the process started with `argv` (`sys.orig_argv`) is one of those above."""
    if (command := _command(argv)) is None:
        return False
    module, args = command
    return module in HEAVY_MODULES or (module == "stepjepa.cli" and bool(args) and args[0] in HEAVY_COMMANDS)


def _command(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, its arguments) of `python [OPTIONS] -m MODULE ...` or of the console script
    `stepjepa ...`; None for anything else (`-c`, another script, the interactive prompt)."""
    index = 1
    while index < len(argv) and argv[index].startswith("-"):
        if argv[index] == "-m":
            return (argv[index + 1], argv[index + 2 :]) if index + 1 < len(argv) else None
        if argv[index] == "-c":
            return None
        index += 2 if argv[index] in OPTIONS_WITH_VALUE else 1
    if index < len(argv) and os.path.basename(argv[index]) == "stepjepa":
        return "stepjepa.cli", argv[index + 1 :]
    return None


def pause() -> None:
    """The collector off until `resume`."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume(preload: tuple[str, ...] = ()) -> None:
    """Import `preload` (what the process would import later); then, where `pause` turned the
    collector off, on again with everything imported so far frozen. Elsewhere (a test calling
    a command's `main` in its own process, a warm run forked from a server that resumed) only
    the imports."""
    global _paused
    for name in preload:
        importlib.import_module(name)
    if _paused:
        _paused = False
        gc.enable()
        gc.freeze()
