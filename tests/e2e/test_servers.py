"""The deployment path users take: real `prefect server` and `mlflow server` on 127.0.0.1,
the sweep served as a deployment, a run triggered through the Prefect CLI with list
parameters in its `sweep` parameter (`--params`; docs/sweeps.md's `-p sweep=...` is
tests/e2e/test_fresh_clone.py's), and the resulting MLflow runs and champion read back over HTTP."""

import os
import subprocess

import pytest
from mlflow import MlflowClient

from tests.support.projects import make_sweep_project
from tests.support.servers import BIN, mlflow_server, prefect_server, process, wait_for_deployment

pytestmark = [pytest.mark.server, pytest.mark.e2e]


@pytest.fixture
def project(tmp_path, tiny_model_dir, conversations):
    sweep = {"ks": [3], "lambdas": [9.0], "experiment": "served", "registered_model_name": "sj-served"}
    return make_sweep_project(tmp_path / "project", tiny_model_dir, conversations, sweep)


def test_served_deployment_triggered_with_list_parameters(tmp_path, project, migrated_prefect, migrated_mlflow):
    env = dict(os.environ) | {
        "PREFECT_HOME": migrated_prefect(tmp_path / "prefect-home"),
        "PREFECT_UI_ENABLED": "false",
    }
    with (
        prefect_server(tmp_path / "prefect.log", env) as api,
        mlflow_server(
            migrated_mlflow(tmp_path / "mlflow.db"), tmp_path / "artifacts", tmp_path / "mlflow.log", env
        ) as ml,
    ):
        client_env = env | {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": ml}
        serve = [str(BIN / "python"), "-m", "pipelines.sweep", "--serve", "--name", "itest"]
        with process(serve, tmp_path / "serve.log", client_env, cwd=project):
            wait_for_deployment(client_env, "itest")
            run = subprocess.run(
                [
                    str(BIN / "prefect"),
                    "deployment",
                    "run",
                    "step-jepa-sweep/itest",
                    "--params",
                    '{"sweep": {"ks": [1], "lambdas": [0.5]}}',
                    "--watch",
                    "--watch-timeout",
                    "400",
                ],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=450,
            )
            assert run.returncode == 0, run.stdout + run.stderr + (tmp_path / "serve.log").read_text()[-3000:]
            assert "Completed" in run.stdout
        client = MlflowClient(ml)
        exp = client.get_experiment_by_name("served")
        names = {
            r.info.run_name for r in client.search_runs([exp.experiment_id], "tags.`stepjepa.kind` = 'sweep-config'")
        }
        assert names == {"sft_s0", "k1_lam0.5_s0"}, "the UI/CLI parameters replaced the params.yaml grid"
        champion = client.get_model_version_by_alias("sj-served", "champion")
        assert champion.tags["config"] in {"sft", "k1_lam0.5"}
