"""Experiment tracking behind one small interface: the library reaches MLflow only through
this package, and callers use it as `tracking.X`.

One module per job:

- `store`: where runs go (the tracking URI, artifacts beside a sqlite store, experiments).
- `run`: the training run's tracker (no-op when off) and `resend`; `start`: `make_tracker`,
  which picks MLflow, the offline record (`offline`) or the no-op.
- `offline`: a run that could not reach the store at its start, recorded in its folder and
  sent later (`send_pending`).
- `lineage`: what a run records about its code and data (git, Source, datasets, DVC).
- `owner`: which process writes a run, to tell a dead one from a live one.
- `sweep`: a sweep's parent run and child runs, their failures, its summary.
- `registry`: the champion in the model registry.
- `folders`: run folders into MLflow (their files; a whole run a store has not seen).
- `evaluation`: model URIs in, evaluation metrics and tables out, results read back.
"""

from stepjepa.tracking.evaluation import download, log_evaluation, log_split, predictions_table, run_problem, run_result
from stepjepa.tracking.folders import backfill_training, log_run_files
from stepjepa.tracking.lineage import dvc_tags, file_dataset, flatten, git_tags, recorded_source, source_tags
from stepjepa.tracking.offline import OfflineTracker, send_pending
from stepjepa.tracking.offline import pending as offline_pending
from stepjepa.tracking.offline import recorded_run_id as offline_run_id
from stepjepa.tracking.owner import OWNER_HOST, OWNER_PID, OWNER_STARTED, owner_gone, owner_tags
from stepjepa.tracking.registry import champion_registered, current_champion, register_champion
from stepjepa.tracking.run import (
    MlflowTracker,
    NoopTracker,
    Tracker,
    log_hf_model,
    log_model_from_folder,
    one_line,
    resend,
)
from stepjepa.tracking.start import make_tracker
from stepjepa.tracking.store import PROJECT_ROOT, artifact_location, init_store, tracking_uri
from stepjepa.tracking.sweep import (
    Unlogged,
    child_run,
    end_stale_sweeps,
    log_sweep_summary,
    mark_failed,
    set_tags,
    sweep_run,
)

__all__ = [
    # store
    "PROJECT_ROOT",
    "artifact_location",
    "init_store",
    "tracking_uri",
    # run
    "MlflowTracker",
    "NoopTracker",
    "Tracker",
    "log_hf_model",
    "log_model_from_folder",
    "make_tracker",
    "one_line",
    "resend",
    # offline
    "OfflineTracker",
    "offline_pending",
    "offline_run_id",
    "send_pending",
    # lineage
    "dvc_tags",
    "file_dataset",
    "flatten",
    "git_tags",
    "recorded_source",
    "source_tags",
    # owner
    "OWNER_HOST",
    "OWNER_PID",
    "OWNER_STARTED",
    "owner_gone",
    "owner_tags",
    # sweep
    "Unlogged",
    "child_run",
    "end_stale_sweeps",
    "log_sweep_summary",
    "mark_failed",
    "set_tags",
    "sweep_run",
    # registry
    "champion_registered",
    "current_champion",
    "register_champion",
    # folders
    "backfill_training",
    "log_run_files",
    # evaluation
    "download",
    "log_evaluation",
    "log_split",
    "predictions_table",
    "run_problem",
    "run_result",
]
