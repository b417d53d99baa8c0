"""`stepjepa compare NEW COMMITTED`: does a rerun of a sweep reproduce a committed result?

Each argument is a sweep's `verdicts.json` (`report.verdict_records`) or the folder that
holds it (`metrics/sweep`, `outputs/demo`, `docs/results/arith`). Every comparison of the
committed result (a config against SFT, or against the base config in a one-at-a-time
sweep) is looked up in the new one and called **reproduced** when:

- it is in both, with the same verdict ("better", "worse", "no significant difference",
  "too few seeds to tell", "failed"), and
- where both have a seed-level 95% t interval of the mean paired accuracy difference, the
  two intervals overlap. So for "no significant difference" (and "too few seeds to tell")
  what is compared is the verdict and the interval: a rerun whose effect moved outside
  the committed interval, and the committed one outside the new, did not reproduce it,
  even if neither is significant. Without an interval (under 2 paired seeds) only the
  verdict is compared.

Otherwise it says what changed: the verdict flipped, the intervals no longer overlap, a
comparison is missing from the new result, or is new in it (the sweeps differ). The exit
code is 0 when every comparison is reproduced, 1 otherwise, 2 when a file cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VERDICTS = "verdicts.json"


@dataclass(frozen=True)
class Finding:
    """One comparison (config against SFT or the base) of the committed result."""

    key: str
    """`config` (against SFT) or `config vs base`."""
    reproduced: bool
    text: str


def _key(record: dict) -> str:
    return record["config"] if record.get("against", "sft") == "sft" else f"{record['config']} vs {record['against']}"


def _interval(record: dict) -> tuple[float, float] | None:
    low, high = record.get("ci_low"), record.get("ci_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return None
    return float(low), float(high)


def _describe(record: dict) -> str:
    interval = _interval(record)
    delta = f" {record['delta']:+.3f}" if record.get("delta") is not None else ""
    return record["verdict"] + delta + (f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "")


def compare_record(new: dict, committed: dict) -> Finding:
    """One comparison present in both results: same verdict, and overlapping intervals where both have one."""
    key = _key(committed)
    if new["verdict"] != committed["verdict"]:
        return Finding(key, False, f"verdict changed: {_describe(committed)} -> {_describe(new)}")
    a, b = _interval(new), _interval(committed)
    if a is not None and b is not None and (a[1] < b[0] or b[1] < a[0]):
        return Finding(key, False, f"interval no longer overlaps: {_describe(committed)} -> {_describe(new)}")
    return Finding(key, True, f"reproduced: {_describe(new)} (committed {_describe(committed)})")


def compare(new: list[dict], committed: list[dict]) -> list[Finding]:
    """Findings for every comparison of either result, in the committed result's order, then
    those only the new result has."""
    fresh = {_key(r): r for r in new}
    old = {_key(r): r for r in committed}
    findings = [
        compare_record(fresh[key], record)
        if key in fresh
        else Finding(key, False, f"missing from the new result (committed: {_describe(record)})")
        for key, record in old.items()
    ]
    findings += [
        Finding(key, False, f"not in the committed result (new: {_describe(record)})")
        for key, record in fresh.items()
        if key not in old
    ]
    return findings


def read_verdicts(path: str | Path) -> list[dict[str, Any]]:
    """A `verdicts.json` file, or the one in the folder `path`; ValueError naming the path."""
    path = Path(path)
    file = path / VERDICTS if path.is_dir() else path
    try:
        records = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(
            f"{file}: no such file (a sweep writes {VERDICTS} beside summary.json; a result "
            "committed before verdicts were recorded has none: rerun it and commit its verdicts.json)"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{file}: not a readable JSON file ({err})") from None
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and {"config", "verdict"} <= r.keys() for r in records
    ):
        raise ValueError(f"{file}: expected a list of records with config and verdict (a sweep's {VERDICTS})")
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stepjepa compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("new", help=f"the rerun's {VERDICTS}, or its folder (e.g. outputs/demo)")
    parser.add_argument("committed", help=f"the committed {VERDICTS}, or its folder (e.g. docs/results/arith)")
    args = parser.parse_args(argv)
    try:
        new, committed = read_verdicts(args.new), read_verdicts(args.committed)
    except ValueError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    findings = compare(new, committed)
    for finding in findings:
        print(f"{finding.key}: {finding.text}")
    same = sum(f.reproduced for f in findings)
    print(f"{same} of {len(findings)} comparisons reproduced ({args.new} against {args.committed})")
    return 0 if same == len(findings) else 1
