"""Where `make test`'s CPU goes, per test module and per test, from the rows that
tests/support/cpu_usage.py writes when STEPJEPA_TEST_CPU_LOG names a folder.

    make test STEPJEPA_TEST_CPU_LOG=outputs/test-cpu
    .venv/bin/python benchmarks/test_suite_profile.py outputs/test-cpu [--tests 20]

The suite is bound by its CPU on two cores (three workers), so a module's cost is its CPU:
the worker's own and that of the processes its tests started and reaped (servers, training
runs, CLI commands). A process nobody waited for is not counted: these are lower bounds, and
the last line compares their sum with the run's wall time on two cores.

Machines lent to this project differ ~2x in speed (benchmarks/results/test-tiers.md), so the
profile ends with a fixed pure-Python probe measured on the machine it runs on, and the counted
CPU in units of it: that ratio compares across machines where seconds do not. Run it on the
machine and the day of the `make test` it reads, with nothing else running.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            rows.append(json.loads(line) | {"worker": path.stem})
    return rows


PROBE_N = 15_000_000  # ~0.75 CPU-s on the 2-vCPU Intel Xeon of test-tiers.md's fourth stop


def speed_probe(n: int = PROBE_N, runs: int = 3) -> float:
    """CPU seconds of `sum(i * i for i in range(n))`, the median of `runs`."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        sum(i * i for i in range(n))
        times.append(time.process_time() - start)
    return statistics.median(times)


def by_module(rows: list[dict]) -> list[dict]:
    modules: dict[str, dict] = collections.defaultdict(lambda: collections.Counter())
    for row in rows:
        m = modules[row["module"]]
        m["tests"] += 1
        m["wall"] += row["wall"]
        m["cpu"] += row["cpu_self"] + row["cpu_children"]
        m["children"] += row["cpu_children"]
    out = [
        {"module": name, "worker": next(r["worker"] for r in rows if r["module"] == name), **m}
        for name, m in modules.items()
    ]
    return sorted(out, key=lambda m: -m["cpu"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--modules", type=int, default=25, help="how many modules to list")
    parser.add_argument("--tests", type=int, default=15, help="how many single tests to list")
    parser.add_argument("--no-probe", action="store_true", help="skip the machine's speed probe")
    args = parser.parse_args(argv)
    rows = read_rows(args.folder)
    if not rows:
        print(f"{args.folder}: no rows (was STEPJEPA_TEST_CPU_LOG set for the run?)")
        return 1
    modules = by_module(rows)
    total = sum(m["cpu"] for m in modules)
    print("| module | worker | tests | wall s | CPU-s | of which processes | share |")
    print("|---|---|---|---|---|---|---|")
    for m in modules[: args.modules]:
        print(
            f"| {m['module']} | {m['worker']} | {m['tests']} | {m['wall']:.0f} | {m['cpu']:.1f} "
            f"| {m['children']:.1f} | {m['cpu'] / total:.1%} |"
        )
    print(f"\nslowest {args.tests} tests by CPU:")
    for row in sorted(rows, key=lambda r: -(r["cpu_self"] + r["cpu_children"]))[: args.tests]:
        print(f"  {row['cpu_self'] + row['cpu_children']:6.1f} CPU-s {row['wall']:6.1f} s  {row['nodeid']}")
    walls = collections.Counter()
    for row in rows:
        walls[row["worker"]] += row["wall"]
    print(
        f"\ncounted: {total:.0f} CPU-s over {len(rows)} tests; workers busy "
        + ", ".join(f"{w} {s:.0f} s" for w, s in sorted(walls.items()))
    )
    if not args.no_probe:
        probe = speed_probe()
        print(
            f"machine probe: {probe:.2f} CPU-s (sum(i*i for i in range({PROBE_N:_})), median of 3); "
            f"counted CPU = {total / probe:.0f} probes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
