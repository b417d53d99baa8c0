"""Experiment tracking behind one small interface: the library reaches MLflow only through it.

`make_tracker(...)` returns an `MlflowTracker` on the main process when tracking is on,
and a `NoopTracker` otherwise, so the training loop never branches on "am I logging?".

Where runs go: `MLFLOW_TRACKING_URI` when set, else `sqlite:///<project root>/mlflow.db`
with artifacts in `<project root>/mlartifacts`. Both are absolute on purpose: MLflow's own
default is relative to the current directory, which scatters runs over wherever a
command happened to start. A new experiment on a sqlite store keeps its artifacts in
`mlartifacts/` beside the database file.

Tracking is off training's critical path: `MlflowTracker.log_metrics` only queues (the
loop has written `metrics.jsonl` already) and a background thread sends. When the server
is unreachable the thread says so once, keeps retrying and sends the backlog when it is
back; points it never sent can be sent later with `python -m stepjepa.resend OUT`.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import yaml

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Tracker(Protocol):
    """What the training loop needs from a tracker."""

    run_id: str | None

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


class MlflowTracker:
    """One MLflow run; `run_id` continues an existing run (resume) instead of starting one.

    The run is started (or resumed) synchronously: its id goes into every checkpoint.
    Metrics are sent by a background thread through a queue of `queue_size` points; `end`
    waits up to `flush_seconds` for it, then leaves the rest to `stepjepa.resend`.
    """

    def __init__(self, experiment: str, run_name: str | None = None, run_id: str | None = None,
                 queue_size: int = 10_000, flush_seconds: float = 60.0):
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
        # A sweep started after this process died ends the run it left RUNNING (end_stale_sweeps).
        mlflow.set_tags(owner_tags())
        log.info("MLflow run %s (%s) in experiment %r at %s", self.run_id, "resumed" if run_id else "new", experiment, uri)
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
                log.info("steps up to %d are already logged in MLflow run %s (an earlier attempt); "
                         "not logging them again", self._logged_through, self.run_id)
            self._skipped += 1
            return
        try:
            self._queue.put_nowait((metrics, step, int(time.time() * 1000)))
        except queue.Full:
            if not self._dropped:
                log.warning("MLflow queue full (%d points unsent): later steps stay in metrics.jsonl only; "
                            "send them with `python -m stepjepa.resend OUT`", self._queue.maxsize)
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
                log.warning("MLflow at %s is unreachable (%s); training goes on, metrics stay in metrics.jsonl "
                            "and are sent when it is back", self._uri, str(err).splitlines()[0][:200])
            return False
        if self._down_since is not None:
            log.info("MLflow at %s is back after %.0f s; sending the queued metrics", self._uri,
                     time.monotonic() - self._down_since)
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
            self._mlflow.log_input(file_dataset(path), context=context,
                                   tags={"origin": origin} if origin else None)

    def log_artifact(self, path: Path) -> None:
        self._mlflow.log_artifact(str(path))

    def log_model(self, model: Any, tokenizer: Any, name: str = "model") -> str | None:
        """Log a transformers model + tokenizer; returns the `models:/` URI to register
        (None when the server is down: the model is in the run folder, training succeeded)."""
        from mlflow.exceptions import MlflowException

        if self._down_since is not None:
            log.warning("MLflow at %s is unreachable: the model is not logged to run %s (it is saved in the run "
                        "folder)", self._uri, self.run_id)
            return None
        try:
            return log_hf_model(model, tokenizer, self.run_id, name)
        except (MlflowException, OSError) as err:
            # A server that went down since the sender last tried (a short run can end
            # before it notices): the run's work is done and its model saved.
            log.warning("could not log the model to MLflow run %s at %s (%s): it is saved in the run folder",
                        self.run_id, self._uri, str(err).splitlines()[0][:200])
            return None

    def end(self, status: str = "FINISHED") -> None:
        sent = self.flush(self._flush_seconds)
        unsent = self._queue.unfinished_tasks + self._dropped
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        if unsent:
            log.warning("%d logged steps were not sent to MLflow run %s at %s; they are in metrics.jsonl: send them "
                        "with `python -m stepjepa.resend OUT`", unsent, self.run_id, self._uri)
        if not sent:
            # The server is down: MLflow's own retries would hold this process for minutes,
            # here and again in its exit handler.
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "5"
        try:
            self._mlflow.end_run(status=status)
        except Exception as err:  # noqa: BLE001 - the run's work is done and saved; only its status is lost
            log.warning("could not mark MLflow run %s %s (%s); `python -m stepjepa.resend OUT` does it later",
                        self.run_id, status, str(err).splitlines()[0][:200])


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
            task="text-generation",
            model_card=card,
            # Without explicit requirements MLflow infers them by importing torchvision.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"transformers=={transformers.__version__}"],
        )
        mlflow.set_tag("model_uri", info.model_uri)
    return info.model_uri


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
        client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp, int(m["step"]))
                                          for k, v in m.items() if k != "step"])
    if run.info.status == "RUNNING":
        client.set_terminated(run_id, status=status)
    return len(missing)


def _last_logged_step(client, run) -> int:
    """The last training step with metrics in `run` (0 for a new run); system and eval
    metrics keep their own step counters and do not count."""
    keys = [k for k in run.data.metrics if not k.startswith(("system/", "eval/"))]
    return max((m.step for k in keys for m in client.get_metric_history(run.info.run_id, k)), default=0)


def make_tracker(kind: str, experiment: str, run_name: str | None, run_id: str | None, is_main: bool) -> Tracker:
    """The tracker for this process: MLflow on the main process when `kind == "mlflow"`."""
    if kind == "none" or not is_main:
        return NoopTracker()
    return MlflowTracker(experiment, run_name=run_name, run_id=run_id)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"k": 2}} -> {"train.k": 2}: the params as dotted keys, like overrides."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def git_tags(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The commit the code came from, and whether the working tree had local changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        return {"git.commit": git("rev-parse", "HEAD"), "git.dirty": str(bool(git("status", "--porcelain")))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def source_tags(entry: Path, root: Path = PROJECT_ROOT) -> dict[str, str]:
    """MLflow's own source fields (the runs table's Source column): the entry point, and the
    commit, branch and remote it came from. A run started through `MLFLOW_RUN_ID` or created
    by a sweep gets none of these from MLflow itself."""
    from mlflow.entities import SourceType
    from mlflow.utils.mlflow_tags import (
        MLFLOW_GIT_BRANCH, MLFLOW_GIT_COMMIT, MLFLOW_GIT_REPO_URL, MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE,
    )

    tags = {MLFLOW_SOURCE_NAME: str(entry), MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL)}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    for key, args in ((MLFLOW_GIT_COMMIT, ("rev-parse", "HEAD")), (MLFLOW_GIT_BRANCH, ("rev-parse", "--abbrev-ref", "HEAD")),
                      (MLFLOW_GIT_REPO_URL, ("config", "--get", "remote.origin.url"))):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            if value := git(*args):
                tags[key] = value
    return tags


def file_dataset(path: Path):
    """An MLflow dataset for a data file: its name, its local path as the source and the md5
    of its bytes as the digest (the hash DVC keeps the file under in its cache)."""
    import hashlib

    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset

    path = Path(path).resolve()
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    # MLflow makes its local-file source class at import time (no importable name).
    local = next(cls for cls in get_registered_sources() if cls._get_source_type() == "local")
    return MetaDataset(local(str(path)), name=f"{path.parent.name}/{path.name}",
                       digest=digest.hexdigest())


def dvc_tags(paths: list[str | Path], root: Path = PROJECT_ROOT) -> dict[str, str]:
    """DVC hashes (from dvc.lock) of the outputs that hold `paths`: which data trained the run.

    A path matches an output that is the path itself or a folder above it (DVC tracks
    `data/tokenized` as one directory output with a `.dir` hash).
    """
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    tags: dict[str, str] = {}
    for path in paths:
        try:
            rel = Path(path).resolve().relative_to(root.resolve())
        except ValueError:
            continue  # outside the project: DVC does not know it
        for stage, body in stages.items():
            for out in body.get("outs", []):
                out_path = Path(out["path"])
                if rel == out_path or out_path in rel.parents:
                    tags[f"dvc.{out['path']}"] = f"{out.get('md5') or out.get('hash')} (stage {stage})"
    return tags


# --- Sweeps: a parent run, one child run per config, the registry -----------------------

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
        return client.create_experiment(name, artifact_location=artifact_location(uri or tracking_uri()),
                                        tags=EXPERIMENT_KIND)
    for key, value in EXPERIMENT_KIND.items():
        if found.tags.get(key) != value:
            client.set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


OWNER_HOST, OWNER_PID, OWNER_STARTED = "stepjepa.owner.host", "stepjepa.owner.pid", "stepjepa.owner.started"


def owner_tags(pid: int | None = None) -> dict[str, str]:
    """The process that writes a run (host, pid and its start time) as run tags: whoever finds
    the run RUNNING later can tell whether it still goes on. The start time tells a reused pid."""
    import socket

    import psutil

    pid = pid or os.getpid()
    return {OWNER_HOST: socket.gethostname(), OWNER_PID: str(pid),
            OWNER_STARTED: f"{psutil.Process(pid).create_time():.2f}"}


def owner_gone(tags: dict[str, str], host: str | None = None) -> str | None:
    """Why the owner named by `tags` (`owner_tags`) is provably gone, or None when it may live:
    it runs, it runs on another host (nothing here can tell), or no owner is named."""
    import socket

    import psutil

    host = host or socket.gethostname()
    pid = tags.get(OWNER_PID)
    if not pid or tags.get(OWNER_HOST) != host:
        return None
    try:
        process = psutil.Process(int(pid))
        started, zombie = f"{process.create_time():.2f}", process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return f"owner pid {pid} on {host} gone"
    if zombie:
        return f"owner pid {pid} on {host} gone (exited, not yet reaped)"
    if tags.get(OWNER_STARTED) not in (None, started):
        return f"owner pid {pid} on {host} gone (the pid now belongs to a later process)"
    return None


def end_stale_sweeps(client, experiment_id: str) -> list[str]:
    """End KILLED the RUNNING sweep parents of the experiment whose owner is provably gone
    (kill -9, a lost machine), with the tag `stepjepa.ended_by`; returns the ids ended.

    Their RUNNING config runs go too unless a live process owns them: a config whose training
    started names its training process (`MlflowTracker` tags it; that process holds the run
    folder's lock), one it never reached belongs to the dead sweep. A parent whose owner
    lives or runs on another host is left alone: two sweeps may run at once.
    """
    ended = []
    running = "attributes.status = 'RUNNING'"
    for parent in client.search_runs([experiment_id], f"tags.`stepjepa.kind` = 'sweep' and {running}"):
        why = owner_gone(parent.data.tags)
        if why is None:
            continue
        children = client.search_runs([experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parent.info.run_id}' and {running}")
        for child in children:
            child_why = owner_gone(child.data.tags) if OWNER_PID in child.data.tags else why
            if child_why:
                ended.append(_end_killed(client, child.info.run_id, f"next sweep: {child_why}"))
        ended.append(_end_killed(client, parent.info.run_id, f"next sweep: {why}"))
    return ended


def _end_killed(client, run_id: str, why: str) -> str:
    log.warning("MLflow run %s was left RUNNING: ending it KILLED (%s)", run_id, why)
    client.set_tag(run_id, "stepjepa.ended_by", why)
    client.set_terminated(run_id, status="KILLED")
    return run_id


@contextmanager
def sweep_run(experiment: str, params: dict[str, Any], run_name: str = "sweep") -> Iterator[str]:
    """The sweep's parent run (sweep params, code version, owner) for the `with` block; yields its id.

    It ends FINISHED when the block does, FAILED on an error and KILLED on an interrupt
    (Ctrl-C, Prefect cancelling the flow), never left RUNNING as if the sweep went on. What
    kill -9 leaves RUNNING, the next sweep of the experiment ends (`end_stale_sweeps`).
    """
    from mlflow.entities import Param

    client = _client()
    experiment_id = _experiment_id(client, experiment)
    end_stale_sweeps(client, experiment_id)
    run_id = client.create_run(experiment_id, run_name=run_name,
                               tags={"stepjepa.kind": "sweep"} | git_tags() | owner_tags()).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flatten(params).items()])
    try:
        yield run_id
    except BaseException as err:
        # Not an Exception: KeyboardInterrupt, SystemExit, Prefect's TerminationSignal.
        status = "FAILED" if isinstance(err, Exception) else "KILLED"
        client.set_tag(run_id, "stepjepa.error", f"{type(err).__name__}: {err}"[-5000:])
        client.set_terminated(run_id, status=status)
        raise
    client.set_terminated(run_id, status="FINISHED")


def child_run(experiment: str, parent_id: str, name: str, cache_key: str) -> str:
    """The child run of one config. A run left by an earlier sweep for the same config and
    data (same cache key) is reused and re-linked to this parent, never duplicated."""
    client = _client()
    exp_id = _experiment_id(client, experiment)
    found = client.search_runs([exp_id], filter_string=f"tags.`stepjepa.cache_key` = '{cache_key}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        # The UI nests a run under one parent: the newest sweep shows it, and the tag
        # `stepjepa.sweeps` keeps every sweep it belongs to, oldest first.
        run_id = found[0].info.run_id
        sweeps = found[0].data.tags.get("stepjepa.sweeps", found[0].data.tags.get("mlflow.parentRunId", ""))
        if parent_id not in sweeps.split(","):
            client.set_tag(run_id, "stepjepa.sweeps", ",".join(filter(None, [sweeps, parent_id])))
        client.set_tag(run_id, "mlflow.parentRunId", parent_id)
        return run_id
    tags = {"mlflow.parentRunId": parent_id, "stepjepa.cache_key": cache_key, "stepjepa.kind": "sweep-config",
            "stepjepa.sweeps": parent_id}
    return client.create_run(exp_id, run_name=name, tags=tags).info.run_id


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, value[:5000])


def mark_failed(run_id: str, message: str) -> None:
    client = _client()
    client.set_tag(run_id, "stepjepa.error", message[-5000:])
    client.set_terminated(run_id, status="FAILED")


def register_champion(name: str, run_id: str, best: dict[str, Any], test: dict[str, Any] | None = None,
                      alias: str = "champion", run_dir: Path | None = None) -> dict[str, Any]:
    """Register the model logged by `run_id` under `name` and point `alias` at it; the version
    is tagged with its config, validation accuracy, the test comparison with the SFT baseline
    and whether any config beat SFT at all. A run whose model is not in this store (its
    folder came from the DVC cache) has it logged from `run_dir/model` first."""
    import mlflow

    client = _client()
    model_uri = client.get_run(run_id).data.tags.get("model_uri")
    if not model_uri and run_dir is not None and (run_dir / "model" / "config.json").is_file():
        model_uri = _log_model_from_folder(run_id, run_dir / "model")
    if not model_uri:
        raise RuntimeError(f"run {run_id} logged no model (train.log_model is off?); nothing to register")
    version = _current_version(client, name, alias, run_id) or mlflow.register_model(model_uri, name).version
    client.set_registered_model_alias(name, alias, version)
    beat = best["config"] != "sft" and best.get("vs_sft_verdict") == "better"
    tags = {"config": best["config"], "views": best.get("views", "steps"), "k": best["k"], "lambda": best["lambda"],
            "run_id": run_id, "run_folder": run_dir.name if run_dir else "", "selected_on": "validation",
            "validation_accuracy_strict": best.get("accuracy_strict"),
            "delta_vs_sft": best.get("vs_sft_delta", 0.0), "vs_sft_verdict": best.get("vs_sft_verdict", "baseline"),
            "beats_sft": "yes" if beat else "no: no config beat the SFT baseline on validation"}
    if test:
        tags |= {f"test_{k}": v for k, v in test.items() if isinstance(v, (int, float, str))}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return {"name": name, "version": str(version), "alias": alias, "uri": f"models:/{name}@{alias}", "run_id": run_id}


def champion_registered(name: str, run_folder: str, alias: str = "champion") -> bool:
    """Whether `name@alias` in this store is the model of `run_folder` (and its run exists)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        version = client.get_model_version_by_alias(name, alias)
        return version.tags.get("run_folder") == run_folder and client.get_run(version.run_id) is not None
    except MlflowException:
        return False


def _log_model_from_folder(run_id: str, model_dir: Path) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _client()  # sets the tracking URI
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    return log_hf_model(model, tokenizer, run_id)


def _current_version(client, name: str, alias: str, run_id: str) -> str | None:
    """The version `alias` points at if it already holds `run_id`'s model: a re-run sweep whose
    configs all came from the cache names the same champion, not a copy of it."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such model or alias yet
        return None
    return current.version if current.tags.get("run_id") == run_id else None


def log_sweep_summary(parent_id: str, rows: list[dict], table_md: str, plots: list[Path],
                      summary: dict[str, Any]) -> None:
    """The sweep's table (markdown and an MLflow table), plots and metrics on the parent run."""
    import mlflow

    client = _client()
    columns = sorted({k for r in rows for k in r})
    cells = {c: [str(r[c]) if isinstance(r.get(c), list) else r.get(c) for r in rows] for c in columns}
    mlflow.log_table(cells, "sweep_summary.json", run_id=parent_id)
    client.log_text(parent_id, table_md, "sweep_summary.md")
    client.log_dict(parent_id, summary, "summary.json")
    for plot in plots:
        client.log_artifact(parent_id, str(plot), "plots")
    for row in rows:
        for key in ("accuracy_strict", "step2_nll"):
            if row.get(key) is not None:
                client.log_metric(parent_id, f"validation/{key}.{row['config']}", row[key])


def run_result(run_id: str, split: str) -> dict[str, Any]:
    """A finished config's result on `split` read back from its MLflow run (the same shape as
    `report.read_run_result`): how a sweep collects configs that ran on a work pool."""
    import tempfile

    from stepjepa.report import read_eval_folder

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


# --- Evaluation: model URIs in, metrics and per-example tables out ---------------------

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

    try:
        MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException as err:
        return err.message
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


# --- Bringing a store up to date from run folders -----------------------------------------

def backfill_training(run_id: str, run_dir: Path, data: dict[str, Path] | None = None) -> None:
    """Log a finished run folder (its `config.yaml` and `metrics.jsonl`) into `run_id` when this
    store has not seen its training: the folder came from the DVC cache or another store.
    `data` (`{context: file}`) are its datasets; the folder's key holds their fingerprint, so
    they are the files it was trained on. Its Source names the entry point but no commit: the
    folder does not record which commit trained it."""
    import json

    from mlflow.entities import Metric, Param

    client = _client()
    run = client.get_run(run_id)
    if run.data.params:
        return
    from stepjepa.train import split_params  # what training logs as params, and what as tags

    values, settings = split_params(yaml.safe_load((run_dir / "config.yaml").read_text()))
    params = [Param(k, str(v)[:6000]) for k, v in values.items()]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stamp = int(time.time() * 1000)
    points = [Metric(k, float(v), stamp, int(m["step"])) for m in lines for k, v in m.items() if k != "step"]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(points), 1000):
        client.log_batch(run_id, metrics=points[i:i + 1000])
    for key, value in settings.items():
        client.set_tag(run_id, key, str(value)[:5000])
    client.set_tag(run_id, "stepjepa.backfilled_from", run_dir.name)
    for key, value in source_tags(Path("stepjepa/train.py")).items():
        if not key.startswith("mlflow.source.git."):
            client.set_tag(run_id, key, value)
    if data:
        _log_datasets(client, run_id, data)
    log_run_files(run_id, run_dir)
    client.set_terminated(run_id, status="FINISHED")


def _log_datasets(client, run_id: str, files: dict[str, Path]) -> None:
    """`MlflowTracker.log_datasets` for a run this process does not hold open."""
    from mlflow.entities import DatasetInput, InputTag

    from stepjepa.sources import recorded_source

    inputs = []
    for context, path in files.items():
        tags = [InputTag("mlflow.data.context", context)]
        if origin := recorded_source(path):
            tags.append(InputTag("origin", origin))
        inputs.append(DatasetInput(file_dataset(path)._to_mlflow_entity(), tags=tags))
    client.log_inputs(run_id, datasets=inputs)


def predictions_table(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Per-example rows as table columns, the question first: the full `prompt` (system
    prompt and chat template around the question) goes last, where it does not hide it."""
    first = [k for k in ("id", "question", "completion", "answer") if k in rows[0]]
    order = first + [k for k in rows[0] if k not in first and k != "prompt"] + (["prompt"] if "prompt" in rows[0] else [])
    return {key: [row.get(key) for row in rows] for key in order}


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
        log.warning("could not log %s of %s to MLflow run %s (%s); they are in the run folder",
                    ", ".join(names), run_dir, run_id, str(err).splitlines()[0][:200])


def log_split(run_id: str, split: str, folder: Path) -> None:
    """An evaluation folder's metrics as `<split>/<name>` and its files as artifacts under
    `<split>/`; values already in the run are not logged again."""
    import json

    client = _client()
    logged = client.get_run(run_id).data.metrics
    metrics = json.loads((folder / "metrics.json").read_text())
    fresh = {f"{split}/{k}": float(v) for k, v in metrics.items()
             if isinstance(v, (int, float)) and logged.get(f"{split}/{k}") != float(v)}
    stamp = int(time.time() * 1000)
    for name, value in fresh.items():
        client.log_metric(run_id, name, value, timestamp=stamp)
    if fresh:
        for name in ("predictions.jsonl", "heldout.jsonl", "metrics.json"):
            if (folder / name).is_file():
                client.log_artifact(run_id, str(folder / name), artifact_path=split)
        predictions = folder / "predictions.jsonl"
        if predictions.is_file() and (rows := [json.loads(line) for line in predictions.read_text().splitlines() if line]):
            client.log_table(run_id, data=predictions_table(rows), artifact_file=f"{split}/predictions_table.json")
