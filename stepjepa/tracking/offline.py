"""A training run that could not reach MLflow: recorded in its run folder, sent when MLflow is back.

When the tracking store cannot be reached as training starts, `make_tracker` warns once and
returns an `OfflineTracker`. What the loop logs (params, tags, datasets, every logged step's
metrics with the time it was logged, artifacts, that the model is to be logged, how the run
ended) is appended to `OUT/mlflow-offline.jsonl`, one event a line; a kill loses at most the
line being written. `replay(out)` creates the MLflow run with the first attempt's start time
(or logs into the run the record names: a resumed run, a sweep's child) and sends what it
lacks; `stepjepa resend OUT`, a sweep and `python -m pipelines.sweep --reconcile` call it.
Replaying twice sends nothing twice.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from stepjepa.tracking.owner import owner_gone, owner_tags
from stepjepa.tracking.store import _client, _experiment_id

log = logging.getLogger(__package__)

RECORD = "mlflow-offline.jsonl"


def _now_ms() -> int:
    return int(time.time() * 1000)


class OfflineTracker:
    """The `Tracker` of a run whose store was unreachable at its start: it writes the record.

    `run_id` is the MLflow run it belongs to when one exists already (a resumed run, a
    sweep's child run), else None until `replay` creates it. `new_run`: this attempt starts
    the run, so the caller logs its params, tags and datasets (not again on a resume).
    """

    def __init__(self, out: Path, experiment: str, run_name: str | None, run_id: str | None, new_run: bool):
        self._path = Path(out) / RECORD
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id or recorded_run_id(out)
        self.new_run = new_run and not any("params" in e for e in read_record(out))
        self._write(
            {
                "start": {
                    "experiment": experiment,
                    "run_name": run_name,
                    "run_id": self.run_id,
                    "time": _now_ms(),
                    "owner": owner_tags(),
                }
            }
        )

    def _write(self, event: dict[str, Any]) -> None:
        with self._path.open("a") as f:
            f.write(json.dumps(event) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._write({"params": {k: str(v)[:6000] for k, v in params.items()}})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._write({"step": step, "metrics": {k: float(v) for k, v in metrics.items()}, "time": _now_ms()})

    def set_tags(self, tags: dict[str, str]) -> None:
        self._write({"tags": {k: str(v)[:5000] for k, v in tags.items()}})

    def log_datasets(self, files: dict[str, Path], origin: str | None = None) -> None:
        # Fingerprinted now: the file may change or go before the record is sent.
        from stepjepa.tracking.lineage import file_dataset

        self._write(
            {
                "datasets": [
                    {
                        "context": context,
                        "origin": origin,
                        "dataset": file_dataset(path)._to_mlflow_entity().to_dictionary(),
                    }
                    for context, path in files.items()
                ]
            }
        )

    def log_artifact(self, path: Path) -> None:
        self._write({"artifact": str(Path(path).resolve())})

    def log_model(self, model: Any, tokenizer: Any, name: str = "model") -> str | None:
        self._write({"model": name})  # sent from OUT/model, which the caller has saved
        return None

    def end(self, status: str = "FINISHED") -> None:
        self._write({"end": status, "time": _now_ms()})


def read_record(out: Path) -> list[dict[str, Any]]:
    """The events of `out`'s record (none without one); a line cut by a kill is skipped."""
    path = Path(out) / RECORD
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return events


def pending(out: Path) -> bool:
    """Whether `out` holds a record with something MLflow has not been sent."""
    events = read_record(out)
    return bool(events) and "sent" not in events[-1]


def recorded_run_id(out: Path) -> str | None:
    """The MLflow run the record of `out` belongs to, once one exists."""
    ids = [e.get("created") or e.get("sent") or e.get("start", {}).get("run_id") for e in read_record(out)]
    return next((i for i in reversed(ids) if i), None)


def started_offline(out: Path) -> int | None:
    """When the run recorded in `out` started (ms since the epoch), if it has a record."""
    return next((e["start"]["time"] for e in read_record(out) if "start" in e), None)


def send_pending(out: Path, run_id: str | None = None) -> str | None:
    """`replay(out, run_id)` if `out` holds a record not yet sent; the run's id, else None."""
    return replay(out, run_id) if pending(out) else None


def replay(out: Path, run_id: str | None = None, end: bool = True) -> str | None:
    """Send the record of `out` to MLflow; returns the run's id (None without a record).

    Into `run_id` if given (a sweep's child run), else the run the record names, else a new
    run of its experiment started at the first attempt's start time. Only what the run lacks
    is sent: params it has not, steps after its last, the model if it has none. With `end`,
    the run is ended as the record says (or KILLED/FINISHED when its writer died without
    saying, FINISHED if the model was saved) unless its writer still runs; without, it is
    left RUNNING for a tracker that continues it.
    """
    out = Path(out)
    events = read_record(out)
    starts = [e["start"] for e in events if "start" in e]
    if not starts:
        return None
    client = _client()
    run_id = run_id or recorded_run_id(out)
    if run_id is None:
        first = starts[0]
        experiment_id = _experiment_id(client, first["experiment"])
        run_id = client.create_run(experiment_id, start_time=first["time"], run_name=first["run_name"]).info.run_id
        with (out / RECORD).open("a") as f:  # a replay cut short continues in this run
            f.write(json.dumps({"created": run_id}) + "\n")
    run = client.get_run(run_id)
    _send_params_and_tags(client, run, events, starts[-1]["owner"])
    if not run.inputs.dataset_inputs:
        _send_datasets(client, run_id, [d for e in events for d in e.get("datasets", [])])
    sent = _send_metrics(client, run, events, out)
    for path in dict.fromkeys(e["artifact"] for e in events if "artifact" in e):
        if Path(path).is_file():
            client.log_artifact(run_id, path)
    if (
        any("model" in e for e in events)
        and not client.get_run(run_id).data.tags.get("model_uri")
        and (out / "model" / "config.json").is_file()
    ):
        from stepjepa.tracking.run import log_model_from_folder

        log_model_from_folder(run_id, out / "model")
    ended = [e for e in events if "end" in e and e["time"] >= starts[-1]["time"]]
    status = ended[-1]["end"] if ended else None
    if end and status is None and owner_gone(starts[-1]["owner"]) is not None:
        status = "FINISHED" if (out / "summary.json").is_file() else "KILLED"
    if end and status is not None:  # also after logging the model, whose `with start_run` ended the run
        client.set_terminated(run_id, status=status, end_time=max(e.get("time", 0) for e in events))
    if not end or status is not None:  # nothing left to send: a tracker continuing the run sends the rest
        with (out / RECORD).open("a") as f:
            f.write(json.dumps({"sent": run_id}) + "\n")
    log.info(
        "sent the record of %s to MLflow run %s (%d steps%s)",
        out,
        run_id,
        sent,
        f", ended {status}" if end and status else "",
    )
    return run_id


def _send_params_and_tags(client, run, events: list[dict], owner: dict[str, str]) -> None:
    from mlflow.entities import Param, RunTag

    params = {k: v for e in events for k, v in e.get("params", {}).items() if k not in run.data.params}
    tags = {k: v for e in events for k, v in e.get("tags", {}).items()} | owner
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    items = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, tags=items[i : i + 100])


def _send_datasets(client, run_id: str, datasets: list[dict]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [
        DatasetInput(
            Dataset.from_dictionary(d["dataset"]),
            tags=[InputTag("mlflow.data.context", d["context"])]
            + ([InputTag("origin", d["origin"])] if d.get("origin") else []),
        )
        for d in datasets
    ]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


def _send_metrics(client, run, events: list[dict], out: Path) -> int:
    """Every step after the run's last, as first logged (a resumed attempt logs the steps
    after its checkpoint again), at the time it was logged; steps in `metrics.jsonl` that no
    event holds (logged by an attempt that had MLflow) too. Returns how many steps were sent."""
    from mlflow.entities import Metric

    from stepjepa.tracking.run import _last_logged_step

    steps: dict[int, tuple[dict[str, float], int]] = {}
    for e in events:
        if "metrics" in e:
            steps.setdefault(int(e["step"]), (e["metrics"], int(e["time"])))
    history = out / "metrics.jsonl"
    lines = [json.loads(line) for line in history.read_text().splitlines() if line.strip()] if history.is_file() else []
    for m in lines:
        steps.setdefault(int(m["step"]), ({k: v for k, v in m.items() if k != "step"}, _now_ms()))
    done = _last_logged_step(client, run)
    batch: list = []
    missing = sorted(s for s in steps if s > done)
    for step in missing:  # whole steps per batch: a replay cut short resumes after the last one sent
        values, stamp = steps[step]
        batch += [Metric(k, float(v), stamp, step) for k, v in values.items()]
        if len(batch) >= 900:
            client.log_batch(run.info.run_id, metrics=batch)
            batch = []
    if batch:
        client.log_batch(run.info.run_id, metrics=batch)
    return len(missing)
