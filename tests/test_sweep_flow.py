"""The Prefect sweep end to end: real Prefect (test harness), real MLflow (sqlite), the
tiny model trained by real `accelerate launch` processes. One config is made to fail
(lambda = 1e39 overflows the loss to inf) to prove that the others still finish."""

import os

import mlflow
import pytest
from mlflow import MlflowClient

from tests.conftest import make_sweep_project

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir, conversations):
    sweep = {"ks": [1], "lambdas": [0.5, 1e39], "experiment": "sweep-test", "registered_model_name": "sj-test"}
    return make_sweep_project(tmp_path_factory.mktemp("sweep"), tiny_model_dir, conversations, sweep)


@pytest.fixture(scope="module")
def environment(project):
    from prefect.testing.utilities import prefect_test_harness

    saved = dict(os.environ)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(project)
    try:
        with prefect_test_harness(server_startup_timeout=90):
            yield project
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(saved)


def children(client, parent_id):
    exp = client.get_experiment_by_name("sweep-test")
    return client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")


def test_sweep_trains_evaluates_registers_and_survives_a_failure(environment):
    from pipelines.sweep import step_jepa_sweep

    summary = step_jepa_sweep(params_file="params.yaml")
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert set(summary["configs"]) == {"sft", "k1_lam0.5", "k1_lam1e+39"}
    assert summary["failed_runs"] == 1
    parent = client.search_runs([client.get_experiment_by_name("sweep-test").experiment_id],
                                "tags.`stepjepa.kind` = 'sweep'")[0]
    assert parent.info.status == "FINISHED"  # a failed config does not fail the sweep
    runs = {r.info.run_name: r for r in children(client, parent.info.run_id)}
    assert set(runs) == {"sft_s0", "k1_lam0.5_s0", "k1_lam1e+39_s0"}
    assert runs["k1_lam1e+39_s0"].info.status == "FAILED"
    for name in ["sft_s0", "k1_lam0.5_s0"]:
        assert runs[name].info.status == "FINISHED"
        assert {"eval/accuracy_strict", "eval/accuracy_flexible", "lm_loss"} <= set(runs[name].data.metrics)
        assert runs[name].data.params["train.k"] == ("0" if name == "sft_s0" else "1")
    assert summary["champion"]["uri"] == "models:/sj-test@champion"
    version = client.get_model_version_by_alias("sj-test", "champion")
    assert version.tags["config"] == summary["best_config"] and "delta_vs_sft" in version.tags
    pipe = mlflow.transformers.load_model("models:/sj-test@champion")
    assert isinstance(pipe("Betty has 5 apples.", max_new_tokens=4)[0]["generated_text"], str)
    assert (environment / "metrics/sweep/heatmap.png").stat().st_size > 1000


def test_rerun_skips_finished_configs(environment):
    from pipelines.sweep import step_jepa_sweep

    (log,) = environment.glob("runs/sweep/k1_lam0.5_s0-*/train.log")
    launches = log.read_text().count("$ ")
    summary = step_jepa_sweep(params_file="params.yaml")
    assert log.read_text().count("$ ") == launches, "a finished config was trained again"
    assert summary["champion"] is not None
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("sweep-test")
    configs = client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep-config'")
    assert len(configs) == 3, "child runs are reused, not duplicated"
    parents = client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep'", order_by=["start_time ASC"])
    assert len(parents) == 2
    for run in configs:  # nested under the newest sweep, and both sweeps are remembered
        assert run.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
        assert run.data.tags["stepjepa.sweeps"] == ",".join(p.info.run_id for p in parents)
    versions = client.search_model_versions("name = 'sj-test'")
    assert len(versions) == 1 and summary["champion"]["version"] == "1", "the same champion is not registered twice"


def test_bad_parameters_are_rejected_before_training(environment):
    from prefect.exceptions import ParameterTypeError

    from pipelines.sweep import step_jepa_sweep
    from stepjepa.config import ConfigError

    for bad in [{"ks": []}, {"ks": [-1]}, {"lambdas": [float("nan")]}]:
        with pytest.raises(ConfigError):
            step_jepa_sweep(params_file="params.yaml", **bad)
    with pytest.raises(ParameterTypeError):
        step_jepa_sweep(params_file="params.yaml", lambdas=["abc"])
    assert not list(environment.glob("runs/sweep/*_s1-*"))
