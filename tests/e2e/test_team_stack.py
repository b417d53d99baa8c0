"""The team topology without Docker: Prefect server and MLflow server both backed by the
PostgreSQL on 127.0.0.1:5432 (databases created and dropped here), a process work pool
with a worker, MLflow artifacts in a local folder. A sweep of one config and the baseline is
dispatched as two work-pool flow runs, lands in MLflow and registers the champion; restarting
the MLflow server loses nothing. (A third config, K = 2, made each `make test` spend ~15 CPU-s
more on one more flow-run process and cold training run, and checked nothing the two do not.)"""

import contextlib
import os
import subprocess
import uuid

import pytest
from mlflow import MlflowClient

from tests.support.projects import make_sweep_project
from tests.support.servers import BIN, mlflow_server, prefect_server, process

pytestmark = [pytest.mark.server, pytest.mark.e2e]
PG = "postgresql://postgres@127.0.0.1:5432"


def postgres_or_skip():
    try:
        import psycopg2

        psycopg2.connect(f"{PG}/postgres", connect_timeout=3).close()
    except Exception as err:  # no server, no driver: a laptop
        pytest.skip(f"no PostgreSQL answers on 127.0.0.1:5432 ({type(err).__name__}: {err})")


@contextlib.contextmanager
def database(name: str):
    import psycopg2

    conn = psycopg2.connect(f"{PG}/postgres")
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def cli(args, env, cwd=None, timeout=300):
    out = subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{' '.join(args)}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def test_sweep_on_a_work_pool_with_postgres_backed_servers(tmp_path, tiny_model_dir, conversations):
    postgres_or_skip()
    sweep = {
        "ks": [1],
        "lambdas": [0.5],
        "experiment": "team",
        "registered_model_name": "sj-team",
        "launcher": "work_pool",
        "config_deployment": "step-jepa-config/team",
    }
    project = make_sweep_project(tmp_path / "project", tiny_model_dir, conversations, sweep)
    suffix = uuid.uuid4().hex[:8]
    env = dict(os.environ) | {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_UI_ENABLED": "false"}
    with database(f"stepjepa_prefect_{suffix}") as prefect_db, database(f"stepjepa_mlflow_{suffix}") as mlflow_db:
        server_env = env | {
            "PREFECT_API_DATABASE_CONNECTION_URL": prefect_db.replace("postgresql:", "postgresql+asyncpg:")
        }
        mlflow_db = mlflow_db.replace("postgresql:", "postgresql+psycopg2:")  # SQLAlchemy 2.1 defaults to psycopg 3
        with prefect_server(tmp_path / "prefect.log", server_env) as api:
            artifacts = tmp_path / "artifacts"
            # `mlflow server` as a team runs it, its uvicorn a child process (one_process=False)
            with mlflow_server(mlflow_db, artifacts, tmp_path / "mlflow.log", env, one_process=False) as ml:
                client_env = env | {"PREFECT_API_URL": api, "MLFLOW_TRACKING_URI": ml}
                cli(["prefect", "work-pool", "create", "team-pool", "--type", "process"], client_env)
                cli(["python", "-m", "pipelines.sweep", "--deploy", "team-pool", "--name", "team"], client_env, project)
                worker = ["prefect", "worker", "start", "--pool", "team-pool", "--limit", "1"]
                with process([str(BIN / worker[0]), *worker[1:]], tmp_path / "worker.log", client_env, cwd=project):
                    cli(["python", "-m", "pipelines.sweep", "--params", "params.yaml"], client_env, project, 600)
                runs = MlflowClient(ml).search_runs(
                    [MlflowClient(ml).get_experiment_by_name("team").experiment_id],
                    "tags.`stepjepa.kind` = 'sweep-config'",
                )
                assert {r.info.run_name for r in runs} == {"sft_s0", "k1_lam0.5_s0"}
                assert all(r.info.status == "FINISHED" and "validation/accuracy_strict" in r.data.metrics for r in runs)
                before = MlflowClient(ml).get_model_version_by_alias("sj-team", "champion")
            restart = mlflow_server(mlflow_db, artifacts, tmp_path / "mlflow2.log", env, one_process=False)
            with restart as ml:
                client = MlflowClient(ml)
                after = client.get_model_version_by_alias("sj-team", "champion")
                assert (after.version, after.run_id) == (before.version, before.run_id)
                # the parent and its two configs
                assert len(client.search_runs([client.get_experiment_by_name("team").experiment_id])) == 3
                assert client.list_artifacts(after.run_id, "validation"), "artifacts survive the restart"
