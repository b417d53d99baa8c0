"""One sweep holding SFT, Step-JEPA and the original LLM-JEPA pair, end to end.

`sweep.views: [steps, user_assistant]` with K = 1 and one lambda gives three configs: the
SFT baseline (one, whatever the pairs) and one per view pair (tests/sweep/test_sweep_grid.py
expands larger grids without training them). Real Prefect (test harness),
real MLflow (sqlite), the tiny model trained by real `accelerate launch` processes. Each
row must say its pair in the table, in MLflow and in the registry.
"""

import os

import pytest
from mlflow import MlflowClient

from tests.support.projects import PATHS, make_sweep_project

pytestmark = pytest.mark.e2e

CONFIGS = {"sft": "steps", "k1_lam0.5": "steps", "ua_k1_lam0.5": "user_assistant"}


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, conversations):
    sweep = {
        "ks": [1],
        "lambdas": [0.5],
        "views": ["steps", "user_assistant"],
        "layout": "packed",
        "experiment": "views-test",
        "registered_model_name": "sj-views",
    }
    return make_sweep_project(tmp_path_factory.mktemp("views"), tiny_model_dir, conversations, sweep)


def test_one_sweep_holds_sft_step_jepa_and_llm_jepa(environment):
    from pipelines.sweep import step_jepa_sweep

    summary = step_jepa_sweep(**PATHS)
    assert summary["configs"] == len(CONFIGS) and summary["failed_runs"] == 0

    table = (environment / "metrics/sweep/table.md").read_text().splitlines()
    for name, views in CONFIGS.items():
        (line,) = [row for row in table if row.startswith(f"| {name} |")]
        if name != "sft":
            assert f"| {views} |" in line, f"the table names the view pair of {name}: {line}"

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("views-test")
    runs = {
        r.info.run_name: r for r in client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep-config'")
    }
    assert set(runs) == {f"{name}_s0" for name in CONFIGS}
    for name, views in CONFIGS.items():
        run = runs[f"{name}_s0"]
        assert run.info.status == "FINISHED" and "validation/accuracy_strict" in run.data.metrics
        assert run.data.params["train.views"] == views and run.data.params["train.layout"] == "packed"
        assert run.data.params["train.k"] == ("0" if name == "sft" else "1")
    ua = runs["ua_k1_lam0.5_s0"].data.metrics
    assert ua.get("jepa_pairs", 0) > 0, "the LLM-JEPA runs trained on user/assistant pairs"
    assert ua.get("validation/n_pairs", 0) > 0, "their view diagnostics measure the user/assistant pair"
    (parent,) = client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep'")
    assert parent.data.params["views"] == "['steps', 'user_assistant']"

    version = client.get_model_version_by_alias("sj-views", "champion")
    assert version.tags["config"] == summary["selected"]
    assert version.tags["views"] == CONFIGS[summary["selected"]]
    assert (environment / "metrics/sweep/heatmap.png").stat().st_size > 1000
