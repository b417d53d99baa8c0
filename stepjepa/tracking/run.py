"""The training run's tracker: what the training loop logs, and sending what it could not.

`make_tracker(...)` (`start.py`) returns an `MlflowTracker` on the main process when tracking is on,
and a `NoopTracker` otherwise, so the training loop never branches on "am I logging?".
When the store cannot be reached as the run starts, it warns once and returns an
`OfflineTracker` (`offline.py`) that records the run in its folder for `stepjepa resend OUT`.

Tracking is off training's critical path: `MlflowTracker.log_metrics` only queues (the
loop has written `metrics.jsonl` already) and a background thread sends. When the server
is unreachable the thread says so once, keeps retrying and sends the backlog when it is
back; points it never sent can be sent later with `python -m stepjepa.training.resend OUT`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Protocol

from stepjepa.tracking.lineage import file_dataset
from stepjepa.tracking.owner import owner_tags
from stepjepa.tracking.store import _client, _experiment_id, init_store, tracking_uri

# One logger for the whole package: log levels set on `stepjepa.tracking` and the lines
# runs write to train.log name it as they did before the package was split.
log = logging.getLogger(__package__)


class Tracker(Protocol):
    """What the training loop needs from a tracker."""

    run_id: str | None
    new_run: bool
    """This attempt starts the run: its params, tags and datasets are logged (not on a resume)."""

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_datasets(self, files: dict[str, Path], origin: str | None = None) -> None: ...
    def log_artifact(self, path: Path) -> None: ...
    def log_model(self, model: Any, tokenizer: Any, name: str = "model") -> str | None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class NoopTracker:
    """Stands in when tracking is off or on a non-main process: every call does nothing."""

    run_id: str | None = None
    new_run = False

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, str]) -> None:
        pass

    def log_datasets(self, files: dict[str, Path], origin: str | None = None) -> None:
        pass

    def log_artifact(self, path: Path) -> None:
        pass

    def log_model(self, model: Any, tokenizer: Any, name: str = "model") -> str | None:
        return None

    def end(self, status: str = "FINISHED") -> None:
        pass


class MlflowTracker:
    """One MLflow run; `run_id` continues an existing run (resume) instead of starting one.

    The run is started (or resumed) synchronously: its id goes into every checkpoint.
    Metrics are sent by a background thread through a queue of `queue_size` points; `end`
    waits up to `flush_seconds` for it, then leaves the rest to `stepjepa.training.resend`.
    """

    def __init__(
        self,
        experiment: str,
        run_name: str | None = None,
        run_id: str | None = None,
        queue_size: int = 10_000,
        flush_seconds: float = 60.0,
    ):
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow's own defaults (7 retries, 120 s timeouts) hold a call for minutes when the
        # server is down; metrics retry in the sender thread, the rest should fail in seconds.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        import mlflow

        self._mlflow = mlflow
        uri = tracking_uri()
        init_store(uri)
        mlflow.set_tracking_uri(uri)
        _experiment_id(mlflow.MlflowClient(uri), experiment, uri)
        mlflow.set_experiment(experiment)
        # log_system_metrics samples CPU/RAM/GPU with psutil in a background thread.
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, log_system_metrics=True)
        self.run_id: str | None = run.info.run_id
        self.new_run = run_id is None
        # A sweep started after this process died ends the run it left RUNNING (end_stale_sweeps).
        mlflow.set_tags(owner_tags())
        log.info(
            "MLflow run %s (%s) in experiment %r at %s", self.run_id, "resumed" if run_id else "new", experiment, uri
        )
        self._client = mlflow.MlflowClient(uri)
        self._logged_through = _last_logged_step(self._client, run)
        self._skipped = 0
        self._uri, self._flush_seconds = uri, flush_seconds
        self._queue: queue.Queue[tuple[dict[str, float], int, int] | None] = queue.Queue(maxsize=queue_size)
        self._dropped = 0
        self._down_since: float | None = None
        self._closing = threading.Event()
        self._sender = threading.Thread(target=self._send_all, name="mlflow-metrics", daemon=True)
        self._sender.start()

    def log_params(self, params: dict[str, Any]) -> None:
        # MLflow caps a param value at 6000 characters; long prompts are cut, not fatal.
        self._mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        # A resumed run replays the steps between its checkpoint and the kill, which the
        # killed attempt had logged already; MLflow cannot delete points, so a step already
        # in the run is kept once, as first logged (the replay trains the same batches).
        if step <= self._logged_through:
            if not self._skipped:
                log.info(
                    "steps up to %d are already logged in MLflow run %s (an earlier attempt); not logging them again",
                    self._logged_through,
                    self.run_id,
                )
            self._skipped += 1
            return
        try:
            self._queue.put_nowait((metrics, step, int(time.time() * 1000)))
        except queue.Full:
            if not self._dropped:
                log.warning(
                    "MLflow queue full (%d points unsent): later steps stay in metrics.jsonl only; "
                    "send them with `python -m stepjepa.training.resend OUT`",
                    self._queue.maxsize,
                )
            self._dropped += 1

    def _send_all(self) -> None:
        """The sender thread: one batch per logged step, retried until sent or closed."""
        from mlflow.entities import Metric

        while (item := self._queue.get()) is not None:
            metrics, step, timestamp = item
            batch = [Metric(k, float(v), timestamp, step) for k, v in metrics.items()]
            while not self._send(batch):
                if self._closing.wait(timeout=2.0):
                    return
            self._queue.task_done()

    def _send(self, batch) -> bool:
        try:
            self._client.log_batch(self.run_id, metrics=batch)
        except Exception as err:  # noqa: BLE001 - any failure of the server is an outage to ride out
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "MLflow at %s is unreachable (%s); training goes on, metrics stay in metrics.jsonl "
                    "and are sent when it is back",
                    self._uri,
                    str(err).splitlines()[0][:200],
                )
            return False
        if self._down_since is not None:
            log.info(
                "MLflow at %s is back after %.0f s; sending the queued metrics",
                self._uri,
                time.monotonic() - self._down_since,
            )
            self._down_since = None
        return True

    def flush(self, timeout: float) -> bool:
        """Wait up to `timeout` s for the queue to drain; whether everything queued was sent."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                if (left := deadline - time.monotonic()) <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def set_tags(self, tags: dict[str, str]) -> None:
        self._mlflow.set_tags(tags)

    def log_datasets(self, files: dict[str, Path], origin: str | None = None) -> None:
        """Each file as an MLflow dataset input of this run, `{context: path}`: the runs
        table's Dataset column. See `file_dataset`."""
        for context, path in files.items():
            self._mlflow.log_input(file_dataset(path), context=context, tags={"origin": origin} if origin else None)

    def log_artifact(self, path: Path) -> None:
        self._mlflow.log_artifact(str(path))

    def log_model(self, model: Any, tokenizer: Any, name: str = "model") -> str | None:
        """Log a transformers model + tokenizer; returns the `models:/` URI to register
        (None when the server is down: the model is in the run folder, training succeeded)."""
        from mlflow.exceptions import MlflowException

        if self._down_since is not None:
            log.warning(
                "MLflow at %s is unreachable: the model is not logged to run %s (it is saved in the run folder)",
                self._uri,
                self.run_id,
            )
            return None
        try:
            return log_hf_model(model, tokenizer, self.run_id, name)
        except (MlflowException, OSError) as err:
            # A server that went down since the sender last tried (a short run can end
            # before it notices): the run's work is done and its model saved.
            log.warning(
                "could not log the model to MLflow run %s at %s (%s): it is saved in the run folder",
                self.run_id,
                self._uri,
                str(err).splitlines()[0][:200],
            )
            return None

    def end(self, status: str = "FINISHED") -> None:
        sent = self.flush(self._flush_seconds)
        unsent = self._queue.unfinished_tasks + self._dropped
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if unsent:
            log.warning(
                "%d logged steps were not sent to MLflow run %s at %s; they are in metrics.jsonl: send them "
                "with `python -m stepjepa.training.resend OUT`",
                unsent,
                self.run_id,
                self._uri,
            )
        if not sent:
            # The server is down: MLflow's own retries would hold this process for minutes,
            # here and again in its exit handler.
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
        try:
            self._mlflow.end_run(status=status)
        except Exception as err:  # noqa: BLE001 - the run's work is done and saved; only its status is lost
            log.warning(
                "could not mark MLflow run %s %s (%s); `python -m stepjepa.training.resend OUT` does it later",
                self.run_id,
                status,
                str(err).splitlines()[0][:200],
            )


def log_hf_model(model: Any, tokenizer: Any, run_id: str, name: str = "model") -> str:
    """Log a transformers model + tokenizer into `run_id`; returns the `models:/` URI to register."""
    import mlflow
    import torch
    import transformers
    from huggingface_hub import ModelCard

    # Our own card: otherwise MLflow fetches one from the hub for the base model's name
    # (~46 s of retries offline unless HF_HUB_OFFLINE is set before the import).
    card = ModelCard(f"# Step-JEPA fine-tune\n\nBase model `{model.name_or_path}`; MLflow run `{run_id}`.\n")
    active = mlflow.active_run()
    context = mlflow.start_run(run_id=run_id) if active is None or active.info.run_id != run_id else nullcontext()
    with context:
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer},
            name=name,
            task="llm/v1/chat",  # messages in, the tokenizer's chat template applied, an answer out
            model_card=card,
            # Without explicit requirements MLflow infers them by importing torchvision.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"],
        )
        mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


def log_model_from_folder(run_id: str, model_dir: Path) -> str:
    """`log_hf_model` of a saved model folder (`OUT/model`): a run whose model was not logged
    when it was trained (its folder came from the DVC cache, or MLflow was down)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _client()  # sets the tracking URI
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    return log_hf_model(model, tokenizer, run_id)


def resend(run_id: str, history: list[dict[str, float]], status: str) -> int:
    """Send the points of `history` (metrics.jsonl lines) that run `run_id` lacks, and end
    it with `status` if it is still RUNNING; returns how many steps were sent."""
    from mlflow.entities import Metric

    client = _client()
    run = client.get_run(run_id)
    done = _last_logged_step(client, run)
    missing = [m for m in history if m["step"] > done]
    timestamp = int(time.time() * 1000)
    for m in missing:
        client.log_batch(
            run_id, metrics=[Metric(k, float(v), timestamp, int(m["step"])) for k, v in m.items() if k != "step"]
        )
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status=status)
    return len(missing)


def _last_logged_step(client, run) -> int:
    """The last training step with metrics in `run` (0 for a new run); system and eval
    metrics keep their own step counters and do not count."""
    keys = [k for k in run.data.metrics if not k.startswith(("system/", "eval/"))]
    return max((m.step for k in keys for m in client.get_metric_history(run.info.run_id, k)), default=0)


def one_line(err: BaseException) -> str:
    """An error as one short line: MLflow's messages run to tracebacks and HTML pages."""
    import re

    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    # requests buries the reason (`[Errno 111] Connection refused`) deep in a wrapped repr.
    if cause := re.search(r"\[Errno -?\d+\] [^'\")]+", text):
        first = f"{first.split(' with exception')[0]}: {cause.group(0)}"
    return first[:200]
