"""Reading the JSON Lines and Parquet files users hand us, and the error that names file, line and field.

`read_jsonl` is strict (the first bad line is an `InputError` naming file and line), for
files that must be right: predictions to score, prepared splits, evaluation examples.
`scan_json_lines` is tolerant (a bad line comes back as its decode error), for raw data
where a bad record is a counted, reported skip (`stepjepa.data.prepare`). `parquet_file` opens
the tokenised rows `--data` names (training, `stepjepa inspect`); `require_files` checks that
the files a command reads are there before it starts anything.
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow.parquet as pq


class InputError(ValueError):
    """Bad user input (a file, a line, a field); the message says which."""


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; errors name file and line.

    `-` reads stdin. A UTF-8 byte-order mark (editors on Windows write one) is skipped.
    """
    text = _read_text(path)
    path = "<stdin>" if str(path) == "-" else path  # how errors name it
    records = []
    # "\n" only: `splitlines` also splits at U+2028 and U+0085, which JSON strings may hold
    # unescaped (GSM8K questions do, in files written with ensure_ascii=False).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append((number, record))
    if not records:
        raise InputError(f"{path}: empty file, no records")
    return records


def _read_text(path: str | Path) -> str:
    """The file (or stdin for `-`) as text; unreadable or non-UTF-8 input is an `InputError`
    naming the file, and for a bad byte its line and column."""
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:  # a folder, no permission, an I/O error
        raise InputError(f"{path}: cannot read ({err.strerror or err})") from None
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[err.start]:02x} at column {column})") from None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The objects of a JSONL file, strictly (`read_jsonl`) and without line numbers."""
    return [record for _, record in read_jsonl(path)]


def scan_json_lines(path: Path) -> Iterator[tuple[int, Any | json.JSONDecodeError]]:
    """(1-based line number, parsed object or the decode error); blank lines are skipped
    by the caller, not here, so they are counted too. A line that is not UTF-8 is a
    decode error naming the byte and column, so only that line is skipped."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                message = f"not valid UTF-8: byte 0x{raw[err.start]:02x}"
                yield lineno, json.JSONDecodeError(message, raw.decode("utf-8", "replace"), err.start)
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as err:
                yield lineno, err


def parquet_file(path: str | Path, columns: Sequence[str] = ()) -> pq.ParquetFile:
    """The tokenised rows `--data` names (docs/data-format.md), opened: its footer read and
    `columns` checked, its rows not read. Reading a footer needs no torch or transformers,
    so a command checks its `--data` before loading them. A folder, a missing or unreadable
    file, no Parquet or a missing column is an `InputError` naming the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        raise InputError(f"--data {path}: a folder; pass the parquet file, e.g. data/tokenized/train.parquet")
    if not path.is_file():
        raise InputError(f"--data {path}: no such file (run `dvc repro tokenize`, or pass --data FILE.parquet)")
    try:
        file = pq.ParquetFile(path)
    except pa.ArrowInvalid as err:
        raise InputError(
            f"--data {path}: not a Parquet file of tokenised rows ({err}); run `dvc repro tokenize` "
            "and pass data/tokenized/train.parquet"
        ) from None
    except OSError as err:  # no permission, an I/O error
        raise InputError(f"--data {path}: cannot read ({err.strerror or err})") from None
    missing = [c for c in columns if c not in file.schema_arrow.names]
    if missing:
        raise InputError(f"--data {path}: missing columns {missing}; see docs/data-format.md")
    return file


def require_files(paths: Sequence[str | Path], remedy: str) -> None:
    """An `InputError` listing every one of `paths` that is not a file, with `remedy` (what
    makes them), in one line."""
    missing = [str(p) for p in map(Path, paths) if not Path(p).is_file()]
    if missing:
        raise InputError(f"{', '.join(missing)}: no such file ({remedy})")
