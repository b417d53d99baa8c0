"""`make bench` runs every benchmark script (benchmarks/bench_*.py), so a new one cannot be
left out of it unnoticed, and writes each table under outputs/bench/."""

from __future__ import annotations

import re

from tests.support.projects import ROOT


def _recipe(target: str) -> list[str]:
    """The command lines of a Makefile target: the tab-indented lines after `target:`."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_bench_runs_every_benchmark_script_into_outputs_bench():
    script = re.compile(r"python benchmarks/(bench_\w+\.py)")
    run = {m.group(1): line for line in _recipe("bench") if (m := script.search(line))}
    scripts = {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert scripts and set(run) == scripts
    assert all("> $(BENCH_OUT)/" in line for line in run.values())
