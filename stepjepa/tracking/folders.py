"""Run folders into MLflow: a run's config and log as its artifacts, and a whole finished
folder (params, metrics, data, files) into a store that has not seen its training."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import yaml

from stepjepa.config import split_params
from stepjepa.tracking.lineage import file_dataset, recorded_source, source_tags
from stepjepa.tracking.store import _client

# One logger for the whole package: log levels set on `stepjepa.tracking` and the lines
# runs write to train.log name it as they did before the package was split.
log = logging.getLogger(__package__)


def backfill_training(run_id: str, run_dir: Path, data: dict[str, Path] | None = None) -> None:
    """Log a finished run folder (its `config.yaml` and `metrics.jsonl`) into `run_id` when this
    store has not seen its training: the folder came from the DVC cache or another store.
    `data` (`{context: file}`) are its datasets; the folder's key holds their fingerprint, so
    they are the files it was trained on. Its Source names the entry point but no commit: the
    folder does not record which commit trained it. A folder trained while MLflow was
    unreachable (`mlflow-offline.jsonl`) is sent from its record instead."""
    import json

    from mlflow.entities import Metric, Param

    from stepjepa.tracking.offline import send_pending

    # Trained while MLflow was unreachable: its own record is the whole run, with its times.
    if send_pending(run_dir, run_id) is not None:
        log_run_files(run_id, run_dir)
        return
    client = _client()
    run = client.get_run(run_id)
    if run.data.params:
        return
    values, settings = split_params(yaml.safe_load((run_dir / "config.yaml").read_text()))
    params = [Param(k, str(v)[:6000]) for k, v in values.items()]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stamp = int(time.time() * 1000)
    points = [Metric(k, float(v), stamp, int(m["step"])) for m in lines for k, v in m.items() if k != "step"]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i : i + 1000])
    for key, value in settings.items():
        client.set_tag(run_id, key, str(value)[:5000])
    client.set_tag(run_id, "stepjepa.backfilled_from", run_dir.name)
    for key, value in source_tags(Path("stepjepa/training/train.py")).items():
        if not key.startswith("mlflow.source.git."):
            client.set_tag(run_id, key, value)
    if data:
        _log_datasets(client, run_id, data)
    log_run_files(run_id, run_dir)
    client.set_terminated(run_id, status="FINISHED")


def _log_datasets(client, run_id: str, files: dict[str, Path]) -> None:
    """`MlflowTracker.log_datasets` for a run this process does not hold open."""
    from mlflow.entities import DatasetInput, InputTag

    inputs = []
    for context, path in files.items():
        tags = [InputTag("mlflow.data.context", context)]
        if origin := recorded_source(path):
            tags.append(InputTag("origin", origin))
        inputs.append(DatasetInput(file_dataset(path)._to_mlflow_entity(), tags=tags))
    client.log_inputs(run_id, datasets=inputs)


def log_run_files(run_id: str, run_dir: Path, names: tuple[str, ...] = ("config.yaml", "train.log")) -> None:
    """The run folder's config and log as artifacts of its run, once they are complete (the
    sweep writes `train.log` in its own process, around the training one). A tracking
    outage costs only these copies: the files stay in the run folder."""
    try:
        client = _client()
        for name in names:
            if (Path(run_dir) / name).is_file():
                client.log_artifact(run_id, str(Path(run_dir) / name))
    except Exception as err:  # noqa: BLE001 - the run itself is done; only the copy is lost
        log.warning(
            "could not log %s of %s to MLflow run %s (%s); they are in the run folder",
            ", ".join(names),
            run_dir,
            run_id,
            str(err).splitlines()[0][:200],
        )
