"""Evaluation in MLflow: model URIs in (`download`), metrics and per-example tables out
(`log_evaluation` for `stepjepa evaluate`, `log_split` for a sweep's splits), and a
config's result on a split read back from its run (`run_result`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stepjepa.tracking.store import _client, _experiment_id, tracking_uri


def run_result(run_id: str, split: str, read_eval_folder: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """A finished config's result on `split` read back from its MLflow run (the same shape as
    `report.read_run_result`): how a sweep collects configs that ran on a work pool. The
    caller passes the reader of an evaluation folder (`report.read_eval_folder`): the
    report sits above tracking, which only fetches the folder and the history."""
    import tempfile

    client = _client()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(client.download_artifacts(run_id, split, tmp))
        result = read_eval_folder(folder)
    keys = [k for k in client.get_run(run_id).data.metrics if "/" not in k]
    steps: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            steps.setdefault(m.step, {"step": m.step})[key] = m.value
    return result | {"history": [steps[s] for s in sorted(steps)]}


def download(uri: str, tracking_uri: str | None = None) -> Path:
    """A local copy of an MLflow artifact or model URI (`models:/name@alias`, `runs:/...`).

    `models:/` URIs are resolved by the model registry, whose URI MLflow takes from its
    global setting, not from `tracking_uri`: left alone, it would create `./mlflow.db` in the
    current directory and find no model there. The version is looked up with a client of
    this store instead: `mlflow.set_registry_uri` would export MLFLOW_REGISTRY_URI, and every
    process started after it would register its models in this store."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    uri_of_store = _store(tracking_uri)
    if uri.startswith("models:/"):  # MLflow resolves these with its global registry, even given one
        client = MlflowClient(tracking_uri=uri_of_store, registry_uri=uri_of_store)
        found = get_model_name_and_version(client, uri)
        if len(found) == 2:  # a registered name (not a logged model's id)
            uri = client.get_model_version_download_uri(*found)
    return Path(download_artifacts(artifact_uri=uri, tracking_uri=uri_of_store))


def _store(uri: str | None) -> str:
    return uri or tracking_uri()


def run_problem(tracking_uri: str, run_id: str) -> str | None:
    """Why `run_id` cannot be logged into at `tracking_uri` (no such run), or None if it can."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from stepjepa.tracking.run import one_line

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except (MlflowException, OSError) as err:  # no such run, or no store to ask: one line either way
        return one_line(err)
    return None


def log_evaluation(metrics: dict[str, float], rows: list[dict[str, Any]], files: tuple[Path, ...],
                   tags: dict[str, str], *, tracking_uri: str, run_id: str | None = None,
                   experiment: str = "stepjepa-eval") -> str:  # fmt: skip
    """Log metrics (`eval/<name>`), the per-example table and the output files; returns the run id.

    Into `run_id` if given (e.g. the training run), else into a new run of `experiment`.
    Settings go in as tags, not params: params cannot change, and a run may be evaluated twice.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    new_run = run_id is None
    if new_run:
        experiment_id = _experiment_id(client, experiment, tracking_uri)
        run_id = client.create_run(experiment_id, run_name="evaluate").info.run_id
    timestamp = int(time.time() * 1000)
    for name, value in metrics.items():
        client.log_metric(run_id, f"eval/{name}", float(value), timestamp=timestamp)
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.log_table(run_id, data=predictions_table(rows), artifact_file="eval/predictions_table.json")
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path="eval")
    if new_run:
        client.set_terminated(run_id)
    return run_id


def predictions_table(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Per-example rows as table columns, the question first: the full `prompt` (system
    prompt and chat template around the question) goes last, where it does not hide it."""
    first = [k for k in ("id", "question", "completion", "answer") if k in rows[0]]
    order = (
        first + [k for k in rows[0] if k not in first and k != "prompt"] + (["prompt"] if "prompt" in rows[0] else [])
    )
    return {key: [row.get(key) for row in rows] for key in order}


def log_split(run_id: str, split: str, folder: Path) -> None:
    """An evaluation folder's metrics as `<split>/<name>` (to the digits they can support,
    `stats.reported`) and its files as artifacts under `<split>/`; values already in the run
    are not logged again."""
    import json

    from stepjepa.stats import reported

    client = _client()
    logged = client.get_run(run_id).data.metrics
    metrics = json.loads((folder / "metrics.json").read_text())
    values = {f"{split}/{k}": reported(k, float(v)) for k, v in metrics.items() if isinstance(v, (int, float))}
    fresh = {name: value for name, value in values.items() if logged.get(name) != value}
    stamp = int(time.time() * 1000)
    for name, value in fresh.items():
        client.log_metric(run_id, name, value, timestamp=stamp)
    if fresh:
        for name in ("predictions.jsonl", "heldout.jsonl", "metrics.json"):
            if (folder / name).is_file():
                client.log_artifact(run_id, str(folder / name), artifact_path=split)
        predictions = folder / "predictions.jsonl"
        if predictions.is_file() and (
            rows := [json.loads(line) for line in predictions.read_text().splitlines() if line]
        ):
            client.log_table(run_id, data=predictions_table(rows), artifact_file=f"{split}/predictions_table.json")
