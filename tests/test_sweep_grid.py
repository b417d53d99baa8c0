"""What a sweep runs: the grid, the baseline, names, resolved configs and cache keys."""

import pytest
import yaml

from stepjepa.config import ConfigError, SweepConfig, config_from_dict
from stepjepa.sweep import cache_key, expand_grid, resolve
from tests.test_config import ROOT


def test_seed_grid_plus_baseline_per_seed():
    specs = expand_grid(SweepConfig(ks=[1, 2, 3], lambdas=[0.1, 0.5, 2.0], seeds=[0, 1]))
    assert len(specs) == 2 * (1 + 9)
    names = [s.name for s in specs]
    assert names[0] == "sft_s0" and names[10] == "sft_s1" and "k2_lam0.5_s1" in names
    assert len(set(names)) == len(names)
    assert sum(s.is_baseline for s in specs) == 2


def test_baseline_not_duplicated_when_grid_contains_it():
    specs = expand_grid(SweepConfig(ks=[0, 1], lambdas=[0.0, 1.0]))
    assert [s.name for s in specs] == ["sft_s0", "k0_lam1_s0", "k1_lam0_s0", "k1_lam1_s0"]


def test_resolved_config_carries_spec_and_overrides():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    sweep = SweepConfig(ks=[2], lambdas=[0.5], layout="packed", overrides={"train.max_steps": 7})
    spec = expand_grid(sweep)[1]
    cfg = resolve(base, spec)
    assert (cfg.train.k, cfg.train.lambda_, cfg.train.layout, cfg.train.max_steps) == (2, 0.5, "packed", 7)
    assert cache_key(cfg, "data-a") == cache_key(resolve(base, spec), "data-a")
    assert cache_key(cfg, "data-a") != cache_key(cfg, "data-b")
    assert cache_key(cfg, "data-a") != cache_key(resolve(base, expand_grid(sweep)[0]), "data-a")


def test_bad_override_names_the_run_and_key():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    spec = expand_grid(SweepConfig(ks=[1], lambdas=[1.0], overrides={"train.nope": 1}))[0]
    with pytest.raises(ConfigError, match=r"(?s)sweep run sft_s0.*train\.nope"):
        resolve(base, spec)


@pytest.mark.parametrize(
    "sweep, key",
    [({"ks": []}, "sweep.ks"), ({"ks": [-1]}, "sweep.ks.0"), ({"lambdas": ["x"]}, "sweep.lambdas.0"),
     ({"lambdas": [float("nan")]}, "sweep.lambdas.0"), ({"seeds": []}, "sweep.seeds")],
)
def test_bad_sweep_params_are_rejected_naming_the_key(sweep, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"sweep": sweep})
