"""Where runs go: the tracking store, its artifact folder and its experiments.

`MLFLOW_TRACKING_URI` when set, else `sqlite:///<project root>/mlflow.db` with artifacts in
`<project root>/mlartifacts`. Both are absolute on purpose: MLflow's own default is
relative to the current directory, which scatters runs over wherever a command happened
to start. A new experiment on a sqlite store keeps its artifacts in `mlartifacts/` beside
the database file.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the project's sqlite store (absolute path)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{PROJECT_ROOT / 'mlflow.db'}"


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a sqlite database; None lets a tracking server decide."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri.removeprefix("sqlite:///"))
    return (db.parent / "mlartifacts").as_uri()


def init_store(uri: str | None = None) -> None:
    """Create or migrate the tracking store once, before concurrent runs use it.

    MLflow migrates a sqlite schema when a process first opens it; several processes
    opening a fresh store at once race (`duplicate column name: step`). A file lock beside
    the database serialises that first open. Other stores (a server) need nothing.
    """
    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///") or uri in _READY_STORES:
        return
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    from stepjepa.runlock import hold

    db = Path(uri.removeprefix("sqlite:///"))
    with hold(db.with_name(db.name + ".init-lock"), f"tracking store {db}", wait=600):
        MlflowClient(uri).search_experiments(max_results=1)
    _READY_STORES.add(uri)


_READY_STORES: set[str] = set()


def _client():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


# MLflow 3 opens an experiment in its GenAI view unless told it holds model training; the
# UI reads this experiment tag (and its own `?workflowType=machine_learning` switch).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client, name: str, uri: str | None = None) -> str:
    """The experiment `name`, created with the training kind if missing; one made by an older
    version of the project gets the kind tag too."""
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(
            name, artifact_location=artifact_location(uri or tracking_uri()), tags=EXPERIMENT_KIND
        )
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id
