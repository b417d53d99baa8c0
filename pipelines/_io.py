"""Small helpers shared by the DVC stage entry points."""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from stepjepa.config import ConfigError
from stepjepa.data.prepare import BadRecordError
from stepjepa.data.tokenization import TokenizationError
from stepjepa.inputs import InputError

# What the library raises for bad input (params, files, records). Anything else is a bug
# and keeps its traceback.
INPUT_ERRORS = (ConfigError, BadRecordError, TokenizationError, InputError, OSError)


def run_stage(name: str, main: Callable[[], None]) -> int:
    """Run a stage's `main`; bad input ends as one line `NAME: error: ...` and exit status 2."""
    try:
        main()
    except INPUT_ERRORS as err:
        print(f"{name}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    return 0


def _one_line(err: Exception) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.filename}: {err.strerror}"  # not "[Errno 2] ...: 'path'"
    # ConfigError lists one bad key per line; DVC shows a stage's stderr, one line reads best there.
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def stage_args(doc: str, *inputs: str) -> argparse.Namespace:
    """`--params` plus the stage's input paths, `--out` and `--metrics` (paths live in dvc.yaml)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    for name in inputs:
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    return parser.parse_args()


def write_json(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
