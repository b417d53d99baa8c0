"""Tracking: where runs go, the no-op tracker, tags from git and dvc.lock, resumed runs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stepjepa import tracking
from stepjepa.tracking import (
    MlflowTracker, NoopTracker, artifact_location, dvc_tags, flatten, make_tracker, tracking_uri,
)

PACKAGE = Path(tracking.__file__).parent


TRAINING_MODULES = ("train.py", "loop.py", "batching.py", "optim.py", "checkpoint.py", "modeling.py", "tracking.py")


def test_training_reaches_mlflow_only_through_the_tracking_module():
    importers = [name for name in TRAINING_MODULES
                 if re.search(r"^\s*(import|from) mlflow", (PACKAGE / name).read_text(), re.M)]
    assert importers == ["tracking.py"]


def test_default_store_is_absolute_in_the_project_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default must not depend on where a command starts
    uri = tracking_uri()
    assert uri == f"sqlite:///{tracking.PROJECT_ROOT / 'mlflow.db'}"
    assert Path(uri.removeprefix("sqlite:///")).is_absolute()
    assert artifact_location(uri) == (tracking.PROJECT_ROOT / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"
    assert artifact_location(tracking_uri()) is None  # the server decides


def test_flatten_gives_dotted_keys():
    assert flatten({"train": {"k": 2, "lambda": 0.1}, "model": {"name": "x"}}) == {
        "train.k": 2, "train.lambda": 0.1, "model.name": "x"}


def test_noop_tracker_when_off_or_not_main():
    assert isinstance(make_tracker("none", "e", None, None, is_main=True), NoopTracker)
    assert isinstance(make_tracker("mlflow", "e", None, None, is_main=False), NoopTracker)
    noop = NoopTracker()
    noop.log_params({"a": 1})
    noop.log_metrics({"loss": 1.0}, step=1)
    assert noop.log_model(None, None) is None and noop.run_id is None


def test_dvc_tags_name_the_outputs_holding_the_data(tmp_path):
    lock = {"schema": "2.0", "stages": {"tokenize": {"outs": [
        {"path": "data/tokenized", "hash": "md5", "md5": "abc.dir"},
        {"path": "metrics/tokenize.json", "hash": "md5", "md5": "def"}]}}}
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


def test_resumed_tracker_continues_the_same_run(monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
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
