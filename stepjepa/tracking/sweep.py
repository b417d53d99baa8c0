"""A sweep in MLflow: its parent run, one child run per config, their tags and failures,
and the summary on the parent; what a dead sweep left RUNNING, the next one ends."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stepjepa.stats import SELECTION_RULE, reported
from stepjepa.tracking.lineage import flatten, git_tags
from stepjepa.tracking.offline import started_offline
from stepjepa.tracking.owner import OWNER_PID, owner_gone, owner_tags
from stepjepa.tracking.run import one_line
from stepjepa.tracking.store import _client, _experiment_id, tracking_uri

# One logger for the whole package: log levels set on `stepjepa.tracking` and the lines
# runs write to train.log name it as they did before the package was split.
log = logging.getLogger(__package__)


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
        # Its runs: those nested under it, and those of earlier sweeps it reused (`child_run`).
        children = {
            run.info.run_id: run
            for where in (
                f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
                f"tags.`stepjepa.sweeps` LIKE '%{parent.info.run_id}%'",
            )
            for run in client.search_runs([experiment_id], f"{where} and {running}")
        }.values()
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


class Unlogged:
    """What a sweep could not log to MLflow (a store down at its start or its end).

    `attempt(what, call)` makes a tracking call (`call()`); when the store cannot be reached it
    is one warning line and `what` joins `items`, the list the sweep prints and exits
    non-zero on. Nothing computed is lost: it is in the run folders and the report, and the
    next sweep (or `python -m pipelines.sweep --reconcile`) logs it. Thread-safe: the
    sweep's tasks share one.
    """

    def __init__(self) -> None:
        self.items: list[str] = []
        self._lock = threading.Lock()

    def attempt(self, what: str, call: Callable[[], Any]) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return call()
        except (MlflowException, OSError) as err:  # requests' connection errors are OSErrors
            self.add(what, one_line(err))
            return None

    def add(self, what: str, reason: str) -> None:
        log.warning(
            "could not log %s to MLflow at %s (%s); it is kept, and the next sweep or "
            "`python -m pipelines.sweep --reconcile` logs it",
            what,
            tracking_uri(),
            reason,
        )
        with self._lock:
            self.items.append(what)


@contextmanager
def sweep_run(
    experiment: str,
    params: dict[str, Any],
    run_name: str = "sweep",
    unlogged: Unlogged | None = None,
    identity: list[str] | None = None,
) -> Iterator[str | None]:
    """The sweep's parent run (sweep params, code version, owner) for the `with` block; yields its id.

    With `identity` (the keys of every run and evaluation it does), the same sweep run again
    reuses the parent that holds its runs (`stepjepa.reruns` counts it) instead of leaving
    an empty one; a sweep that reuses some runs of other sweeps says which parents hold them
    (`stepjepa.children_in` and the run's description). It ends FINISHED when the block does,
    FAILED on an error and KILLED on an interrupt (Ctrl-C, Prefect cancelling the flow), never
    left RUNNING as if the sweep went on. What kill -9 leaves RUNNING, the next sweep of the
    experiment ends (`end_stale_sweeps`). With `unlogged`, a store that cannot be reached
    yields None (the sweep goes on without MLflow) and one that goes away before the end
    costs only the parent's end.
    """
    from mlflow.entities import Param

    key = hashlib.sha256("\n".join(sorted(identity)).encode()).hexdigest()[:32] if identity else None

    def start() -> str:
        client = _client()
        experiment_id = _experiment_id(client, experiment)
        end_stale_sweeps(client, experiment_id)
        earlier = _same_sweep(client, experiment_id, key) if key else None
        if earlier is not None:
            reruns = int(earlier.data.tags.get("stepjepa.reruns", "0")) + 1
            client.update_run(earlier.info.run_id, status="RUNNING", name=run_name)
            for tag, value in (git_tags() | owner_tags() | {"stepjepa.reruns": str(reruns)}).items():
                client.set_tag(earlier.info.run_id, tag, value)
            log.info("the same sweep ran before: reusing its parent run %s (rerun %d)", earlier.info.run_id, reruns)
            return earlier.info.run_id
        tags = {"stepjepa.kind": "sweep"} | ({"stepjepa.sweep_identity": key} if key else {})
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags | git_tags() | owner_tags()).info.run_id
        client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flatten(params).items()])
        return run_id

    run_id = unlogged.attempt("the sweep's parent run and its runs", start) if unlogged else start()
    if run_id is None:
        yield None
        return
    client = _client()
    try:
        yield run_id
    except BaseException as err:
        # Not an Exception: KeyboardInterrupt, SystemExit, Prefect's TerminationSignal.
        status = "FAILED" if isinstance(err, Exception) else "KILLED"
        try:
            client.set_tag(run_id, "stepjepa.error", f"{type(err).__name__}: {err}"[-5000:])
            client.set_terminated(run_id, status=status)
        except Exception as tracking_err:  # noqa: BLE001 - the sweep's own error is the one to raise
            log.warning("could not end the sweep's MLflow run %s %s (%s)", run_id, status, one_line(tracking_err))
        raise

    def end() -> None:
        _point_to_holders(client, run_id)
        client.set_terminated(run_id, status="FINISHED")

    if unlogged:
        unlogged.attempt("the sweep's parent run's end", end)
    else:
        end()


def _same_sweep(client, experiment_id: str, key: str):
    """The newest ended parent run of the sweep with identity `key`, or None (a live one is
    another process's: two sweeps may run at once)."""
    found = client.search_runs(
        [experiment_id],
        f"tags.`stepjepa.sweep_identity` = '{key}' and attributes.status != 'RUNNING'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return found[0] if found else None


def _point_to_holders(client, run_id: str) -> None:
    """Tag (and describe) the parent `run_id` with the parents that show the runs it reused."""
    run = client.get_run(run_id)
    mine = client.search_runs([run.info.experiment_id], f"tags.`stepjepa.sweeps` LIKE '%{run_id}%'")
    holders = sorted({r.data.tags.get("mlflow.parentRunId", "") for r in mine} - {run_id, ""})
    if not holders:
        return
    named = [f"{client.get_run(h).info.run_name} ({h})" for h in holders]
    count = sum(r.data.tags.get("mlflow.parentRunId") != run_id for r in mine)
    text = (
        f"{count} of this sweep's {len(mine)} runs were reused from earlier sweeps and are shown under: "
        + "; ".join(named)
    )
    client.set_tag(run_id, "stepjepa.children_in", ",".join(holders))
    note = run.data.tags.get("mlflow.note.content", "").split("\n\n**Reused runs:**")[0]  # a rerun's, said anew
    client.set_tag(run_id, "mlflow.note.content", (f"{note}\n\n" if note else "") + f"**Reused runs:** {text}"[:5000])


def child_run(
    experiment: str, parent_id: str, name: str, cache_key: str, run_dir: Path | None = None, create: bool = True
) -> str | None:
    """The child run of one config. A run left by an earlier sweep for the same config and
    data (same cache key) is reused, never duplicated: it stays under the parent that trained
    it (which the new parent names, `_point_to_holders`) unless that one is gone, and its tag
    `stepjepa.sweeps` lists every sweep it belongs to, oldest first. A new one starts when
    the run in `run_dir` did, if it was trained without MLflow (its record); with `create`
    False, none starts (None): the sweep creates it when the config's training starts."""
    client = _client()
    exp_id = _experiment_id(client, experiment)
    found = client.search_runs(
        [exp_id],
        filter_string=f"tags.`stepjepa.cache_key` = '{cache_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        run_id, tags = found[0].info.run_id, found[0].data.tags
        sweeps = tags.get("stepjepa.sweeps", tags.get("mlflow.parentRunId", ""))
        if parent_id not in sweeps.split(","):
            client.set_tag(run_id, "stepjepa.sweeps", ",".join(filter(None, [sweeps, parent_id])))
        if not _alive(client, tags.get("mlflow.parentRunId")):
            client.set_tag(run_id, "mlflow.parentRunId", parent_id)
        return run_id
    if not create:
        return None
    tags = {
        "mlflow.parentRunId": parent_id,
        "stepjepa.cache_key": cache_key,
        "stepjepa.kind": "sweep-config",
        "stepjepa.sweeps": parent_id,
    }
    return client.create_run(
        exp_id, run_name=name, tags=tags, start_time=started_offline(run_dir) if run_dir else None
    ).info.run_id


def _alive(client, run_id: str | None) -> bool:
    """Whether `run_id` names a run of this store that is not deleted."""
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, value[:5000])


def mark_failed(run_id: str, message: str) -> None:
    client = _client()
    client.set_tag(run_id, "stepjepa.error", message[-5000:])
    client.set_terminated(run_id, status="FAILED")


def log_sweep_summary(
    parent_id: str, rows: list[dict], table_md: str, plots: list[Path], summary: dict[str, Any]
) -> None:
    """The sweep's table (markdown and an MLflow table), plots and metrics on the parent run,
    and, as tags and its description, the selected config and why, and the registry's outcome."""
    import mlflow

    client = _client()
    if summary.get("selected"):
        client.set_tag(parent_id, "stepjepa.selected", summary["selected"])
        client.set_tag(parent_id, "stepjepa.selected_by", SELECTION_RULE)
    if summary.get("registry"):
        client.set_tag(parent_id, "stepjepa.registry", summary["registry"][:5000])
    client.set_tag(parent_id, "mlflow.note.content", _note(summary))
    columns = sorted({k for r in rows for k in r})
    # Written to the digits they support, as every tracked result (`stats.reported`).
    cells = {c: [str(r[c]) if isinstance(r.get(c), list) else reported(c, r.get(c)) for r in rows] for c in columns}
    mlflow.log_table(cells, "sweep_summary.json", run_id=parent_id)
    client.log_text(parent_id, table_md, "sweep_summary.md")
    client.log_dict(parent_id, summary, "summary.json")
    for plot in plots:
        client.log_artifact(parent_id, str(plot), "plots")
    for row in rows:
        for key in ("accuracy_strict", "step2_nll"):
            if row.get(key) is not None:
                client.log_metric(parent_id, f"validation/{key}.{row['config']}", reported(key, row[key]))


def _note(summary: dict[str, Any]) -> str:
    """The parent's description (the run page's first lines): what won, why, and the registry."""
    lines = []
    if summary.get("selected"):
        verdict = summary.get("verdict")
        lines.append(
            f"**Selected:** {summary['selected']} ({SELECTION_RULE})" + (f"; vs SFT: {verdict}" if verdict else "")
        )
    if summary.get("registry"):
        lines.append(f"**Registry:** {summary['registry']}")
    return "\n\n".join(lines)[:5000]
