"""A one-factor-at-a-time sweep over a training key (`sweep.axes`), end to end.

`axes: {target_grad: [true, false]}` around K = 1, lambda 0.5, two seeds: SFT, the base
config and the config with the target gradient off. Real Prefect (test harness), real
MLflow (sqlite), the tiny model trained by real `accelerate launch` processes. The runs
must train what their names say, and the report must compare the factor's level with the
base config (tests/sweep/test_sweep_grid.py expands larger designs without training them).
"""

import json
import os

import pytest
from mlflow import MlflowClient

from tests.support.projects import PATHS, make_sweep_project

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, conversations):
    sweep = {
        "ks": [1],
        "lambdas": [0.5],
        "seeds": [0, 1],
        "layout": "packed",
        "design": "one_at_a_time",
        "axes": {"target_grad": [True, False]},
        "experiment": "axes-test",
        "registered_model_name": "sj-axes",
    }
    return make_sweep_project(tmp_path_factory.mktemp("axes"), tiny_model_dir, conversations, sweep)


def test_one_factor_at_a_time_trains_what_the_names_say_and_reports_against_the_base(environment):
    from pipelines.sweep import step_jepa_sweep

    summary = step_jepa_sweep(**PATHS)
    assert summary["configs"] == 3 and summary["failed_runs"] == 0

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("axes-test")
    runs = {
        r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep-config'")
    }
    assert set(runs) == {
        f"{name}_s{seed}" for name in ("sft", "k1_lam0.5", "k1_lam0.5_target_grad-false") for seed in (0, 1)
    }
    for name, run in runs.items():
        assert run.info.status == "FINISHED"
        assert run.data.params["train.target_grad"] == ("False" if "target_grad-false" in name else "True")
    folders = sorted(p.name.rsplit("-", 1)[0] for p in (environment / "runs/sweep").iterdir())
    assert folders == sorted(runs), "one run folder per run, named as the run"

    verdicts = json.loads((environment / "metrics/sweep/verdicts.json").read_text())
    against = {(v["config"], v["against"]) for v in verdicts}
    assert against == {
        ("k1_lam0.5", "sft"),
        ("k1_lam0.5_target_grad-false", "sft"),
        ("k1_lam0.5_target_grad-false", "base"),
    }
    base = next(v for v in verdicts if v["against"] == "base")
    assert (base["factor"], base["level"], base["paired_seeds"]) == ("target_grad", "false", 2)
    assert base["ci_low"] <= base["delta"] <= base["ci_high"]
    table = (environment / "metrics/sweep/table.md").read_text()
    assert "**One factor at a time around k1_lam0.5**" in table
    assert (
        "| target_grad | true | k1_lam0.5 |" in table
        and "| target_grad | false | k1_lam0.5_target_grad-false |" in table
    )
    assert (environment / "metrics/sweep/effects.png").stat().st_size > 1000
