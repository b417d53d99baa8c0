"""MLflow's own lineage fields on a real sqlite store (issue 18, item 5): the Source and
Dataset columns of the runs table, config.yaml and train.log as artifacts, the experiment
shown as a training experiment, and predictions that show the question first."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from stepjepa import tracking
from stepjepa.tracking.store import _experiment_id
from tests.support.train import make_config, write_tokenized


@pytest.fixture
def store(tmp_path, monkeypatch, migrated_mlflow):
    import mlflow

    uri = migrated_mlflow(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return mlflow.MlflowClient(uri)


def _artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    return {f.path for f in client.list_artifacts(run_id, path)}


def test_a_training_run_has_source_datasets_config_and_a_training_experiment(
    tiny_model_dir, conversations, tmp_path, store
):
    from stepjepa.training.train import train

    project = tmp_path / "project"
    (project / "data/tokenized").mkdir(parents=True)
    (project / "metrics").mkdir()
    (project / "metrics/fetch.json").write_text(json.dumps({"source": "GSM8K_DIR", "files": {}}))
    data = write_tokenized(tiny_model_dir, conversations[:32], project / "data/tokenized/train.parquet")
    val = write_tokenized(tiny_model_dir, conversations[90:94], project / "data/tokenized/validation.parquet")
    cfg = make_config(tiny_model_dir, tracking="mlflow", max_steps=2, experiment="lineage")
    result = train(cfg, data, tmp_path / "run", val_data=val)

    run = store.get_run(result.run_id)
    tags = run.data.tags
    assert tags["mlflow.source.name"] == "stepjepa/training/train.py" and tags["mlflow.source.type"] == "LOCAL"
    if "git.commit" in tags:  # a source tree without git has no commit to name
        assert re.fullmatch(r"[0-9a-f]{40}", tags["mlflow.source.git.commit"]) and tags["mlflow.source.git.branch"]
    assert tags["data.origin"] == "GSM8K_DIR"

    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"training", "validation"}
    for context, path in (("training", data), ("validation", val)):
        dataset = inputs[context].dataset
        assert dataset.digest == hashlib.md5(path.read_bytes()).hexdigest()
        assert json.loads(dataset.source)["uri"] == str(path.resolve()) and dataset.source_type == "local"
        assert {t.key: t.value for t in inputs[context].tags}["origin"] == "GSM8K_DIR"

    assert "config.yaml" in _artifacts(store, result.run_id)
    experiment = store.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_existing_experiment_is_marked_as_training(store):
    old = store.create_experiment("made-before")
    assert _experiment_id(store, "made-before") == old
    assert store.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_sweep_run_gets_its_config_and_log_once_complete(tmp_path, store):
    run_id = store.create_run(_experiment_id(store, "sweep")).info.run_id
    (tmp_path / "config.yaml").write_text("train:\n  k: 1\n")
    (tmp_path / "train.log").write_text("step 1/1 loss=1.0\n")
    tracking.log_run_files(run_id, tmp_path)
    assert {"config.yaml", "train.log"} <= _artifacts(store, run_id)


def test_the_predictions_table_shows_the_question_first(tmp_path, store):
    run_id = store.create_run(_experiment_id(store, "sweep")).info.run_id
    rows = [
        {
            "id": f"q{i}",
            "question": f"How many apples, {i}?",
            "prompt": "<|im_start|>system\nLong system prompt...",
            "completion": "\\boxed{3}",
            "answer": "3",
            "correct_strict": True,
        }
        for i in range(2)
    ]
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "metrics.json").write_text(json.dumps({"accuracy_strict": 1.0}))
    tracking.log_split(run_id, "validation", folder)
    table = json.loads(
        Path(store.download_artifacts(run_id, "validation/predictions_table.json", str(tmp_path))).read_text()
    )
    columns = table["columns"]
    assert columns[:4] == ["id", "question", "completion", "answer"] and columns[-1] == "prompt"
    assert [row[1] for row in table["data"]] == [r["question"] for r in rows]
