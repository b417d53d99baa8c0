"""`make study`'s params (the Makefile's STUDY_PARAMS): they validate, DVC's `-S` (Hydra) and
`load_config` read them alike, and they expand to the seed's ablation, one factor at a time
(no training: the run list only)."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from stepjepa.config import load_config
from stepjepa.sweep.specs import expand_grid
from tests.support.projects import ROOT

pytestmark = [pytest.mark.cli, pytest.mark.skipif(shutil.which("make") is None, reason="needs make")]


def _sets(target: str) -> list[str]:
    """The `-S` arguments of the target's `dvc exp run`, as `make -n` prints them (with `++`)."""
    out = subprocess.run(["make", "-n", "-s", target], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    args = shlex.split(next(line for line in out.splitlines() if line.startswith("dvc exp run")))
    return [args[i + 1] for i, arg in enumerate(args) if arg == "-S"]


def test_the_study_is_the_seeds_ablation_one_factor_at_a_time_with_five_seeds():
    cfg = load_config(ROOT / "params.yaml", [s.removeprefix("++") for s in _sets("study")])
    specs = expand_grid(cfg.sweep)
    names = [s.config_name for s in specs if s.seed == 0]
    assert names == [
        "sft",
        "k1_lam0.1",
        "k0_lam0.1",
        "k2_lam0.1",
        "k3_lam0.1",
        "k1_lam0.02",
        "k1_lam0.5",
        "ua_k1_lam0.1",
        "k1_lam0.1_loss-cosine",
        "k1_lam0.1_loss-mse",
        "k1_lam0.1_layout-inline",
        "k1_lam0.1_layout-two_pass",
        "k1_lam0.1_target_grad-false",
    ]
    assert cfg.sweep.seeds == [0, 1, 2, 3, 4] and len(specs) == 65, (
        "docs/sweeps.md's sizing (make study) counts 65 runs"
    )
    assert [s.factor for s in specs[:3]] == [None, "base", "k"]
    assert cfg.data.source == "arith" and cfg.sweep.experiment == "step-jepa-arith-study"
    # The study trains what the demo trains (its task, model and steps); only the sweep differs.
    demo = load_config(ROOT / "params.yaml", [s.removeprefix("++") for s in _sets("demo")])
    assert cfg.model_copy(update={"sweep": demo.sweep}) == demo


def test_dvc_applies_the_study_params_as_the_config_reads_them(tmp_path):
    from dvc.utils.hydra import apply_overrides

    sets = _sets("study")
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(params, sets)
    assert load_config(params) == load_config(ROOT / "params.yaml", [s.removeprefix("++") for s in sets])
