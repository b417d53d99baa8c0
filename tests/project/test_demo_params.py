"""`make demo`'s params (the Makefile's DEMO_PARAMS) validate against the config, and the
sizing script measures exactly them (benchmarks/size_arith.py's DEMO), so the sizing in
benchmarks/results/arith-sizing.md cannot silently drift from what the demo runs."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess

import pytest

from stepjepa.config import load_config
from stepjepa.stats import MIN_SEEDS
from tests.support.projects import ROOT


def _demo_sets() -> list[str]:
    """The `-S key=value` arguments of the demo's `dvc exp run`, as `make -n demo` prints them."""
    out = subprocess.run(["make", "-n", "-s", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("dvc exp run"))
    args = shlex.split(line)
    return [args[i + 1].removeprefix("++") for i, arg in enumerate(args) if arg == "-S"]


def _sizing_demo() -> list[str]:
    spec = importlib.util.spec_from_file_location("size_arith", ROOT / "benchmarks" / "size_arith.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEMO


@pytest.mark.cli
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_demo_params_validate_and_are_what_the_sizing_measures():
    sets = _demo_sets()
    cfg = load_config(ROOT / "params.yaml", sets)
    assert cfg.data.source == "arith" and len(cfg.sweep.ks) * len(cfg.sweep.lambdas) >= 4
    # Verdicts are decided over seeds (stats.MIN_SEEDS at the least); the paper used 5.
    assert len(cfg.sweep.seeds) >= max(5, MIN_SEEDS)
    assert cfg.sweep.max_concurrent == 2  # two single-thread runs side by side on 2 cores
    per_run = [s for s in sets if not s.startswith("sweep.")]
    assert load_config(ROOT / "params.yaml", per_run) == load_config(ROOT / "params.yaml", _sizing_demo())
