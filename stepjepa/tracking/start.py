"""Which tracker a training process gets: MLflow, the offline record when MLflow cannot be
reached as training starts, or a no-op (tracking off, or not the main process)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import stepjepa.tracking.offline as offline
from stepjepa.tracking.run import MlflowTracker, NoopTracker, Tracker, one_line
from stepjepa.tracking.store import tracking_uri

log = logging.getLogger(__package__)  # the tracking package's one logger, as run.py's


def make_tracker(
    kind: str, experiment: str, run_name: str | None, run_id: str | None, is_main: bool, out: Path | None = None
) -> Tracker:
    """The tracker for this process: MLflow on the main process when `kind == "mlflow"`.

    With the run folder `out`, a store that cannot be reached (or `STEPJEPA_MLFLOW_OFFLINE=1`,
    set by a sweep that could not reach it) is one warning and an `OfflineTracker`: the run
    is recorded in `out` for `stepjepa resend OUT`. A run recorded so by an earlier attempt
    is sent first and continued online when the store is back.
    """
    if kind == "none" or not is_main:
        return NoopTracker()
    if out is None:
        return MlflowTracker(experiment, run_name=run_name, run_id=run_id)
    uri, reason = tracking_uri(), "the sweep that started this run could not reach it"
    if os.environ.get("STEPJEPA_MLFLOW_OFFLINE") != "1":
        # urllib3 logs each retry of a refused connection: the warning below is the one line.
        retries = logging.getLogger("urllib3.connectionpool")
        level = retries.level
        retries.setLevel(logging.ERROR)
        try:
            if offline.pending(out):  # started offline: send what it has, then continue that run
                run_id = offline.replay(out, run_id, end=False) or run_id
            return MlflowTracker(experiment, run_name=run_name, run_id=run_id or offline.recorded_run_id(out))
        except Exception as err:  # noqa: BLE001 - MLflow's, requests' and sqlite's errors alike: an unreachable store
            reason = one_line(err)
        finally:
            retries.setLevel(level)
    log.warning(
        "MLflow at %s is unreachable (%s): training goes on offline, recorded in %s; "
        "`stepjepa resend %s` sends it when MLflow is back",
        uri,
        reason,
        out / offline.RECORD,
        out,
    )
    return offline.OfflineTracker(
        out, experiment, run_name, run_id or os.environ.get("MLFLOW_RUN_ID"), new_run=run_id is None
    )
