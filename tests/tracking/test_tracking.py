"""Tracking: where runs go, the no-op tracker, tags from git and dvc.lock, resumed runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stepjepa import tracking
from stepjepa.tracking import (
    MlflowTracker,
    NoopTracker,
    artifact_location,
    dvc_tags,
    flatten,
    make_tracker,
    tracking_uri,
)

LIBRARY = Path(tracking.__file__).parents[1]


def test_the_library_reaches_mlflow_only_through_the_tracking_package():
    modules = sorted(LIBRARY.rglob("*.py"))
    assert len(modules) > 20 and LIBRARY / "evaluation" / "evaluate.py" in modules
    importers = [
        path.relative_to(LIBRARY) for path in modules if re.search(r"^\s*(import|from) mlflow", path.read_text(), re.M)
    ]
    assert importers and {path.parts[0] for path in importers} == {"tracking"}


@pytest.mark.cli
def test_importing_the_library_loads_no_mlflow():
    """MLflow is imported by the calls that track, so a run with tracking off never pays for it."""
    code = "import sys, stepjepa.tracking, stepjepa.evaluation.evaluate; assert 'mlflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=LIBRARY.parent, check=True)


def test_the_package_exports_every_name_its_callers_use():
    used: set[str] = set()
    for path in [*LIBRARY.rglob("*.py"), *(LIBRARY.parent / "pipelines").glob("*.py")]:
        if LIBRARY / "tracking" in path.parents:
            continue
        text = path.read_text()
        used |= set(re.findall(r"\btracking\.([A-Za-z]\w*)\(", text))
        for names in re.findall(r"^\s*from stepjepa\.tracking import ([\w, ]+)$", text, re.M):
            used |= {name.strip() for name in names.split(",")}
    assert {"sweep_run", "register_champion", "log_split", "Tracker", "resend"} <= used  # the search works
    assert used <= set(tracking.__all__)
    assert all(hasattr(tracking, name) for name in tracking.__all__)


def test_default_store_is_absolute_in_the_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default must not depend on where a command starts
    uri = tracking_uri()
    assert tracking.PROJECT_ROOT == Path(__file__).resolve().parents[2]  # the checkout, not a folder in it
    assert uri == f"sqlite:///{tracking.PROJECT_ROOT / 'mlflow.db'}"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()
    assert artifact_location(uri) == (tracking.PROJECT_ROOT / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert artifact_location(tracking_uri()) is None  # the server decides


def test_flatten_gives_dotted_keys():
    assert flatten({"train": {"k": 2, "lambda": 0.1}, "model": {"name": "x"}}) == {
        "train.k": 2,
        "train.lambda": 0.1,
        "model.name": "x",
    }


def test_noop_tracker_when_off_or_not_main():
    assert isinstance(make_tracker("none", "e", None, None, is_main=True), NoopTracker)
    assert isinstance(make_tracker("mlflow", "e", None, None, is_main=False), NoopTracker)
    noop = NoopTracker()
    noop.log_params({"a": 1})
    noop.log_metrics({"loss": 1.0}, step=1)
    assert noop.log_model(None, None) is None and noop.run_id is None


def test_dvc_tags_name_the_outputs_holding_the_data(tmp_path):
    lock = {
        "schema": "2.0",
        "stages": {
            "tokenize": {
                "outs": [
                    {"path": "data/tokenized", "hash": "md5", "md5": "abc.dir"},
                    {"path": "metrics/tokenize.json", "hash": "md5", "md5": "def"},
                ]
            }
        },
    }
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "data" / "tokenized").mkdir(parents=True)
    tags = dvc_tags([tmp_path / "data" / "tokenized" / "train.parquet", "/elsewhere/file"], root=tmp_path)
    assert tags == {"dvc.data/tokenized": "abc.dir (stage tokenize)"}
    assert dvc_tags([tmp_path / "x"], root=tmp_path / "no-lock") == {}


def test_git_tags_name_the_commit():
    tags = tracking.git_tags()
    if tags:  # a source tree without git has none
        assert re.fullmatch(r"[0-9a-f]{40}", tags["git.commit"])
        assert tags["git.dirty"] in {"True", "False"}


def test_git_dirty_means_code_or_params_changed_not_the_pipelines_outputs(tmp_path):
    """A fresh clone's `make run` rewrites dvc.lock and metrics/ while it runs: its runs are not
    dirty for that; a changed module or params file is; an untracked file is not."""
    from stepjepa.tracking.lineage import git_tags, pipeline_outputs

    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "prepare": {"cmd": "x", "outs": ["data/prepared", {"metrics/prepare.json": {"cache": False}}]},
                    "sweep": {"cmd": "y", "metrics": [{"metrics/sweep/summary.json": {"cache": False}}]},
                }
            }
        )
    )
    files = ["dvc.lock", "metrics/prepare.json", "metrics/sweep/summary.json", "code.py", "params.yaml"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("committed\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "c"], cwd=tmp_path, check=True)
    outputs = ["dvc.lock", "data/prepared", "metrics/prepare.json", "metrics/sweep/summary.json"]
    assert pipeline_outputs(tmp_path) == outputs
    assert git_tags(tmp_path)["git.dirty"] == "False"
    for name in ["dvc.lock", "metrics/prepare.json", "metrics/sweep/summary.json"]:
        (tmp_path / name).write_text("rewritten by the pipeline\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_tags(tmp_path)["git.dirty"] == "False"
    for name in ["code.py", "params.yaml"]:
        (tmp_path / name).write_text("edited\n")
        assert git_tags(tmp_path)["git.dirty"] == "True", name
        subprocess.run(["git", "checkout", "-q", name], cwd=tmp_path, check=True)


def test_resumed_tracker_continues_the_same_run(monkeypatch, tmp_path, migrated_mlflow):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    first = MlflowTracker("exp", run_name="r")
    first.log_params({"train.k": 2})
    first.log_metrics({"loss": 2.0}, step=1)
    first.end()
    again = MlflowTracker("exp", run_id=first.run_id)
    again.log_params({"train.k": 2})  # re-logging the same params on resume is allowed
    again.log_metrics({"loss": 1.0}, step=2)
    again.end()
    runs = mlflow.search_runs(experiment_names=["exp"], output_format="list")
    assert [r.info.run_id for r in runs] == [first.run_id]
    history = mlflow.MlflowClient().get_metric_history(first.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]
    experiment = mlflow.get_experiment_by_name("exp")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_a_resumed_run_does_not_log_a_step_twice(monkeypatch, tmp_path, caplog, migrated_mlflow):
    """The killed attempt logged steps 1-3 after its checkpoint at step 1; the resumed one
    replays 2-3: MLflow keeps one point per step."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    killed = MlflowTracker("exp", run_name="r")
    for step in (1, 2, 3):
        killed.log_metrics({"loss": 10.0 + step, "lr": 0.1}, step=step)
    killed.end("KILLED")
    resumed = MlflowTracker("exp", run_id=killed.run_id)
    with caplog.at_level("INFO", logger="stepjepa.tracking"):
        for step in (2, 3, 4, 5):
            resumed.log_metrics({"loss": 20.0 + step, "lr": 0.1}, step=step)
    resumed.end()
    client = mlflow.MlflowClient()
    for key in ("loss", "lr"):
        steps = [m.step for m in client.get_metric_history(killed.run_id, key)]
        assert sorted(steps) == [1, 2, 3, 4, 5], key
    values = {m.step: m.value for m in client.get_metric_history(killed.run_id, "loss")}
    assert values == {1: 11.0, 2: 12.0, 3: 13.0, 4: 24.0, 5: 25.0}
    assert "steps up to 3 are already logged" in caplog.text


def _sweep_run_status(tmp_path, monkeypatch, migrated_mlflow, body) -> tuple[str, dict, list]:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    seen = []
    try:
        with tracking.sweep_run("sweeps", {"ks": [0, 2]}) as parent:
            seen.append(parent)
            assert mlflow.MlflowClient().get_run(parent).info.status == "RUNNING"
            body()
    except BaseException as err:  # noqa: BLE001 - the test re-checks what escaped below
        seen.append(err)
    run = mlflow.MlflowClient().get_run(seen[0])
    assert run.data.params["ks"] == "[0, 2]" and run.data.tags["stepjepa.kind"] == "sweep"
    return run.info.status, run.data.tags, seen[1:]


def test_sweep_parent_run_finishes_with_the_block(tmp_path, monkeypatch, migrated_mlflow):
    status, tags, escaped = _sweep_run_status(tmp_path, monkeypatch, migrated_mlflow, lambda: None)
    assert status == "FINISHED" and "stepjepa.error" not in tags and escaped == []


def test_sweep_parent_run_is_failed_by_an_error_and_the_error_still_raises(tmp_path, monkeypatch, migrated_mlflow):
    def fail():
        raise RuntimeError("run abc logged no model")

    status, tags, escaped = _sweep_run_status(tmp_path, monkeypatch, migrated_mlflow, fail)
    assert status == "FAILED" and tags["stepjepa.error"] == "RuntimeError: run abc logged no model"
    assert [type(e) for e in escaped] == [RuntimeError]


def test_sweep_parent_run_is_killed_by_an_interrupt(tmp_path, monkeypatch, migrated_mlflow):
    def interrupt():
        raise KeyboardInterrupt

    status, tags, escaped = _sweep_run_status(tmp_path, monkeypatch, migrated_mlflow, interrupt)
    assert status == "KILLED" and tags["stepjepa.error"].startswith("KeyboardInterrupt")
    assert [type(e) for e in escaped] == [KeyboardInterrupt]


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_a_sweep_ends_the_running_parents_whose_owner_is_provably_gone(monkeypatch, tmp_path, migrated_mlflow):
    """kill -9 leaves a sweep's parent RUNNING; the next sweep of the experiment ends it
    KILLED, and only it: a live owner, another host or no owner at all is left alone."""
    import os
    import socket

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    client = MlflowClient(tracking_uri())
    exp = client.create_experiment("stale")
    me, dead = tracking.owner_tags(), _dead_pid()
    owners = {
        "live": me,
        "dead": me | {tracking.OWNER_PID: str(dead)},
        "reused": me | {tracking.OWNER_STARTED: "12.00"},  # our pid, but a process that started long ago
        "elsewhere": me | {tracking.OWNER_HOST: "not-" + socket.gethostname(), tracking.OWNER_PID: str(dead)},
        "unnamed": {},
    }
    parents = {
        name: client.create_run(exp, run_name=name, tags={"stepjepa.kind": "sweep"} | tags).info.run_id
        for name, tags in owners.items()
    }
    # Config runs of the dead sweep: one its training never reached, one a live training owns
    # (a retried config), one whose training died too.
    child = {
        name: client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parents["dead"]} | tags).info.run_id
        for name, tags in {
            "unstarted": {},
            "training-live": tracking.owner_tags(os.getppid()),
            "training-dead": me | {tracking.OWNER_PID: str(dead)},
        }.items()
    }

    with tracking.sweep_run("stale", {"ks": [1]}) as new:
        pass

    status = {name: client.get_run(run_id).info.status for name, run_id in (parents | child).items()}
    assert status == {
        "live": "RUNNING",
        "dead": "KILLED",
        "reused": "KILLED",
        "elsewhere": "RUNNING",
        "unnamed": "RUNNING",
        "unstarted": "KILLED",
        "training-live": "RUNNING",
        "training-dead": "KILLED",
    }
    host = socket.gethostname()
    assert (
        client.get_run(parents["dead"]).data.tags["stepjepa.ended_by"] == f"next sweep: owner pid {dead} on {host} gone"
    )
    assert "later process" in client.get_run(parents["reused"]).data.tags["stepjepa.ended_by"]
    assert client.get_run(child["unstarted"]).data.tags["stepjepa.ended_by"].startswith("next sweep: owner pid")
    assert "stepjepa.ended_by" not in client.get_run(parents["live"]).data.tags
    new_run = client.get_run(new)
    assert new_run.info.status == "FINISHED" and new_run.data.tags[tracking.OWNER_PID] == str(os.getpid())


def test_owner_gone_reads_the_pid_and_its_start_time():
    import os
    import socket

    me = tracking.owner_tags()
    assert me[tracking.OWNER_PID] == str(os.getpid()) and me[tracking.OWNER_HOST] == socket.gethostname()
    assert tracking.owner_gone(me) is None
    assert tracking.owner_gone(me | {tracking.OWNER_PID: str(_dead_pid())}).endswith("gone")
    assert tracking.owner_gone(me, host="another-host") is None


def _sweep(name: str, keys: list[str], identity: list[str] | None = None) -> tuple[str, list[str]]:
    """A parent run named `name` with one child per cache key, as the sweep flow makes them."""
    with tracking.sweep_run("sweeps", {"ks": [1]}, run_name=name, identity=identity) as parent:
        children = [tracking.child_run("sweeps", parent, f"run-{key}", key) for key in keys]
    return parent, children


def _experiment(client) -> str:
    return client.get_experiment_by_name("sweeps").experiment_id


def test_the_same_sweep_again_reuses_its_parent_and_a_partly_reused_one_names_the_holder(
    tmp_path, monkeypatch, migrated_mlflow
):
    """Issue 32: `make run` twice and a UI sweep over finished configs left parents without
    children (every reused child moved to the newest parent)."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    client = MlflowClient(tracking_uri())
    first, children = _sweep("sweep seeds=0 (params.yaml)", ["a", "b"], identity=["ea", "eb"])
    again, same = _sweep("sweep seeds=0 (params.yaml)", ["a", "b"], identity=["eb", "ea"])
    assert again == first and same == children
    # A config still to train gets no run until its training starts (the sweep then creates it).
    assert tracking.child_run("sweeps", first, "run-later", "later", create=False) is None
    assert not client.search_runs([_experiment(client)], "tags.`stepjepa.cache_key` = 'later'")
    run = client.get_run(first)
    assert run.info.status == "FINISHED" and run.data.tags["stepjepa.reruns"] == "1"

    # A smaller sweep of one finished config and one new one: the finished child stays under
    # the parent that trained it, which the new parent names.
    other, (reused, new) = _sweep("sweep seeds=0 (params.yaml but ks)", ["a", "c"], identity=["ea", "ec"])
    assert other != first and reused == children[0]
    assert client.get_run(reused).data.tags["mlflow.parentRunId"] == first
    assert client.get_run(reused).data.tags["stepjepa.sweeps"] == f"{first},{other}"
    assert client.get_run(new).data.tags["mlflow.parentRunId"] == other
    tags = client.get_run(other).data.tags
    assert tags["stepjepa.children_in"] == first
    assert "1 of this sweep's 2 runs were reused" in tags["mlflow.note.content"]
    assert f"sweep seeds=0 (params.yaml) ({first})" in tags["mlflow.note.content"]

    # A holder that was deleted no longer shows the run: the next sweep does.
    client.delete_run(first)
    last, (moved,) = _sweep("sweep seeds=0 ks=2", ["b"])
    assert client.get_run(moved).data.tags["mlflow.parentRunId"] == last
    assert "stepjepa.children_in" not in client.get_run(last).data.tags


def test_the_parent_says_the_selected_config_why_and_the_registry(tmp_path, monkeypatch, migrated_mlflow):
    from mlflow import MlflowClient

    from stepjepa.stats import SELECTION_RULE

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    summary = {"selected": "k1_lam0.5", "verdict": "too few seeds to tell", "registry": "first champion: version 1"}
    with tracking.sweep_run("sweeps", {"ks": [1]}) as parent:
        tracking.log_sweep_summary(parent, [{"config": "k1_lam0.5", "accuracy_strict": 0.5}], "| t |", [], summary)
    tags = MlflowClient(tracking_uri()).get_run(parent).data.tags
    assert tags["stepjepa.selected"] == "k1_lam0.5" and tags["stepjepa.selected_by"] == SELECTION_RULE
    assert tags["stepjepa.registry"] == "first champion: version 1"
    assert tags["mlflow.note.content"] == (
        f"**Selected:** k1_lam0.5 ({SELECTION_RULE}); vs SFT: too few seeds to tell\n\n"
        "**Registry:** first champion: version 1"
    )


def test_the_parents_metrics_and_table_are_written_to_the_digits_they_support(tmp_path, monkeypatch, migrated_mlflow):
    """Issue 32: the parent's `validation/*.<config>` metrics and its sweep table are rounded as
    every other tracked result (`stats.reported`), so float noise from another CPU does not show."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    row = {"config": "sft", "accuracy_strict": 0.123456789, "step2_nll": 5.33049871, "ks": [0]}
    with tracking.sweep_run("sweeps", {"ks": [1]}) as parent:
        tracking.log_sweep_summary(parent, [row], "| t |", [], {"selected": "sft"})
    client = MlflowClient(tracking_uri())
    metrics = client.get_run(parent).data.metrics
    assert metrics["validation/accuracy_strict.sft"] == 0.1235 and metrics["validation/step2_nll.sft"] == 5.33
    table = json.loads((Path(client.download_artifacts(parent, "sweep_summary.json", str(tmp_path)))).read_text())
    cells = dict(zip(table["columns"], table["data"][0], strict=True))
    assert cells["accuracy_strict"] == 0.1235 and cells["step2_nll"] == 5.33 and cells["ks"] == "[0]"


def test_a_dead_sweep_ends_the_runs_it_reused_from_an_earlier_sweep(monkeypatch, tmp_path, migrated_mlflow):
    """A reused run stays nested under the sweep that trained it (issue 32); a dead sweep that
    was resuming it still leaves it to the next sweep to end."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    client = MlflowClient(tracking_uri())
    exp = client.create_experiment("stale")
    earlier = client.create_run(exp, run_name="earlier", tags={"stepjepa.kind": "sweep"}).info.run_id
    client.set_terminated(earlier, status="FINISHED")
    dead = client.create_run(
        exp,
        run_name="dead",
        tags={"stepjepa.kind": "sweep"} | tracking.owner_tags() | {tracking.OWNER_PID: str(_dead_pid())},
    ).info.run_id
    reused = client.create_run(
        exp, run_name="reused", tags={"mlflow.parentRunId": earlier, "stepjepa.sweeps": f"{earlier},{dead}"}
    ).info.run_id

    with tracking.sweep_run("stale", {"ks": [1]}):
        pass

    assert client.get_run(dead).info.status == "KILLED" and client.get_run(reused).info.status == "KILLED"
    assert client.get_run(earlier).info.status == "FINISHED"
