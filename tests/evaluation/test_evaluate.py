"""`stepjepa evaluate` on the tiny model: outputs, MLflow logging, and clear input errors."""

from __future__ import annotations

import gc
import json
import os
import shutil
from pathlib import Path

import pytest

from stepjepa.cli import main as cli_main
from stepjepa.evaluation.eval_examples import load_examples
from stepjepa.evaluation.score import score_file
from stepjepa.inputs import InputError
from stepjepa.prompts import DEFAULT_SYSTEM_PROMPT
from tests.support.collector import paused_collector


@pytest.fixture(scope="module")
def test_file(tmp_path_factory, conversations):
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in conversations[:60]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory, migrated_mlflow):
    """One sqlite store for the module."""
    return migrated_mlflow(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


def evaluate(capsys, *args) -> tuple[int, dict | None, str]:
    """Run the CLI; (exit code, printed metrics or None, stderr)."""
    code = cli_main(["evaluate", "--no-progress", "--max-new-tokens", "8", *map(str, args)])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def test_load_examples_prepared_and_raw(tmp_path, test_file):
    prepared = load_examples(test_file, "unused", limit=3)
    assert [e.id for e in prepared] == ["train-000001", "train-000002", "train-000003"]
    assert [m["role"] for m in prepared[0].messages] == ["system", "user"]
    raw = tmp_path / "raw.jsonl"
    raw.write_text(json.dumps({"question": "Q?", "answer": "1+1=2\n#### 2"}) + "\n")
    (example,) = load_examples(raw, DEFAULT_SYSTEM_PROMPT)
    assert (example.id, example.gold, example.messages[0]["content"]) == ("raw-000001", 2, DEFAULT_SYSTEM_PROMPT)


def test_evaluate_limit_50_writes_records_and_metrics(tiny_model_dir, test_file, tmp_path, capsys):
    out = tmp_path / "eval"
    code, metrics, _ = evaluate(capsys, "--model", tiny_model_dir, "--data", test_file, "--limit", 50,
                                "--batch-size", 16, "--out", out)  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 50 and metrics["n"] == 50
    assert {"id", "prompt", "completion", "answer", "gold", "extracted_strict", "extracted_flexible",
            "correct_strict", "correct_flexible", "completion_tokens", "stopped"} <= set(rows[0])  # fmt: skip
    assert rows[0]["prompt"].endswith("<|im_start|>assistant\n") and "predictor" not in rows[0]["prompt"]
    # The question alone, for tables that would otherwise show the system prompt first.
    assert rows[0]["question"] and rows[0]["prompt"].endswith(
        f"{rows[0]['question']}<|im_end|>\n<|im_start|>assistant\n"
    )
    # Speed differs between machines: it lives in timing.json, the metrics file holds only results.
    timing = json.loads((out / "timing.json").read_text())
    assert json.loads((out / "metrics.json").read_text()) | timing == metrics and timing["completions_per_second"] > 0
    for name in ["accuracy_strict", "accuracy_flexible", "no_answer_strict", "no_answer_flexible",
                 "mean_completion_tokens", "hit_max_new_tokens"]:  # fmt: skip
        assert name in metrics
    # the predictions file re-scores to the same numbers without the model
    _, rescored = score_file(out / "predictions.jsonl")
    assert {k: rescored[k] for k in rescored} == {k: metrics[k] for k in rescored}


def test_evaluate_logs_to_mlflow_and_loads_a_runs_uri(tiny_model_dir, test_file, tmp_path, capsys, mlflow_uri):
    from mlflow import MlflowClient

    uri = mlflow_uri
    client = MlflowClient(uri)
    experiment = client.create_experiment("train", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(tiny_model_dir), artifact_path="model")
    args = ("--model", f"runs:/{run_id}/model", "--data", test_file, "--limit", 50, "--out", tmp_path / "eval")
    code, metrics, _ = evaluate(capsys, *args, "--tracking-uri", uri, "--mlflow-run-id", run_id)
    assert code == 0
    run = client.get_run(run_id)
    assert run.data.metrics["eval/accuracy_strict"] == metrics["accuracy_strict"]
    assert run.data.metrics["eval/n"] == 50
    assert run.data.tags["eval.limit"] == "50"
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert logged == {"eval/predictions.jsonl", "eval/metrics.json", "eval/timing.json", "eval/predictions_table.json"}


def test_evaluate_in_a_new_mlflow_run(tiny_model_dir, test_file, tmp_path, capsys, mlflow_uri):
    from mlflow import MlflowClient

    uri = mlflow_uri
    code, _, _ = evaluate(capsys, "--model", tiny_model_dir, "--data", test_file, "--limit", 4,
                          "--out", tmp_path / "eval", "--tracking-uri", uri, "--mlflow")  # fmt: skip
    assert code == 0
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("stepjepa-eval").experiment_id])
    assert run.data.metrics["eval/n"] == 4
    store = Path(uri.removeprefix("sqlite:///")).parent
    assert (store / "mlartifacts" / run.info.run_id).is_dir()  # beside the store, not in the working directory


@pytest.fixture
def no_template_dir(tiny_model_dir, tmp_path):
    path = tmp_path / "base"
    shutil.copytree(tiny_model_dir, path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_bad_model_inputs_are_clear_errors(tmp_path, test_file, no_template_dir, capsys):
    code, _, err = evaluate(capsys, "--model", tmp_path / "nope", "--data", test_file)
    assert code == 2 and "no such model directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = evaluate(capsys, "--model", tmp_path / "empty", "--data", test_file)
    assert code == 2 and "no config.json" in err
    code, _, err = evaluate(capsys, "--model", no_template_dir, "--data", test_file)
    assert code == 2 and "has no chat template" in err
    assert "Traceback" not in err


def test_bad_data_and_params_are_clear_errors(tiny_model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "a", "messages": [{"role": "system", "content": "S"}], "gold": "3"}) + "\n")
    code, _, err = evaluate(capsys, "--model", tiny_model_dir, "--data", bad)
    assert code == 2 and f"{bad}:1: field 'messages' has no user message" in err
    code, _, err = evaluate(capsys, "--model", tiny_model_dir, "--data", tmp_path / "missing.jsonl")
    assert code == 2 and "missing.jsonl: no such file" in err
    code, _, err = evaluate(capsys, "--model", tiny_model_dir, "--data", bad, "--batch-size", 0)
    assert code == 2 and "eval.batch_size" in err


def test_prepared_record_without_gold(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Q"}]}) + "\n")
    with pytest.raises(InputError, match=r"p.jsonl:1: missing field 'gold'"):
        load_examples(path, "S")


def test_mlflow_transformers_layout_is_found(tiny_model_dir, tmp_path):
    """`mlflow.transformers.log_model` stores `model/` and `components/tokenizer/` side by side."""
    from stepjepa.config import Config
    from stepjepa.model.model_source import load_model, resolve_model_dir

    root = tmp_path / "artifacts"
    shutil.copytree(tiny_model_dir, root / "model", ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    shutil.copytree(tiny_model_dir, root / "components" / "tokenizer", ignore=shutil.ignore_patterns("*.safetensors"))
    (root / "MLmodel").write_text("flavors: {}\n")
    model_dir = resolve_model_dir(str(root))
    assert model_dir == root / "model"
    _, tokenizer = load_model(model_dir, Config(), "cpu")
    assert tokenizer.chat_template


def test_unknown_mlflow_run_fails_before_generating(tiny_model_dir, test_file, tmp_path, capsys, mlflow_uri):
    code, _, err = evaluate(capsys, "--model", tiny_model_dir, "--data", test_file, "--tracking-uri", mlflow_uri,
                            "--mlflow-run-id", "0123456789abcdef", "--out", tmp_path / "eval")  # fmt: skip
    assert code == 2 and "--mlflow-run-id 0123456789abcdef: not a run" in err
    assert not (tmp_path / "eval").exists()


def test_evaluate_model_renders_prompts_with_the_pinned_date():
    """What `stepjepa evaluate` passes on (`tokenize.date_string`) reaches the template."""
    from fractions import Fraction

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stepjepa.evaluation.eval_examples import Example
    from stepjepa.evaluation.evaluate import evaluate_model
    from tests.support import tokenizer_families as families

    tok = families.byte_level_bpe()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    messages = [{"role": "system", "content": "Solve it."}, {"role": "user", "content": "What is 2+3?"}]
    example = Example(id="q1", messages=messages, answer="#### 5", gold=Fraction(5))
    result = evaluate_model(model, tok, [example], batch_size=1, max_new_tokens=2, date_string="03 Mar 2025")
    assert "Today Date: 03 Mar 2025" in result.rows[0]["prompt"]


@pytest.fixture
def hub_cache(tmp_path, tiny_model_dir, monkeypatch):
    """A Hugging Face cache holding the tiny model as hub repo `stepjepa/tiny-test`, laid out
    as `snapshot_download` leaves it, plus a pickle it must never need; offline."""
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--stepjepa--tiny-test"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return repo


def test_a_hub_id_loads_from_the_hugging_face_cache(hub_cache, test_file, tmp_path, capsys):
    code, metrics, err = evaluate(capsys, "--model", "stepjepa/tiny-test", "--data", test_file, "--limit", 3,
                                  "--out", tmp_path / "eval")  # fmt: skip
    assert code == 0, err
    assert metrics["n"] == 3
    code, _, err = evaluate(capsys, "--model", "stepjepa/not-cached", "--data", test_file)
    assert code == 2 and "not in the Hugging Face cache" in err and "HF_HUB_OFFLINE=0" in err
    assert "Traceback" not in err


def test_limit_all_overrides_the_params_limit(tiny_model_dir, test_file, tmp_path, capsys, monkeypatch):
    (tmp_path / "params.yaml").write_text("eval:\n  limit: 2\n")
    monkeypatch.chdir(tmp_path)
    base = ("--model", tiny_model_dir, "--data", test_file, "--out", tmp_path / "eval", "--params", "params.yaml")
    assert evaluate(capsys, *base)[1]["n"] == 2
    assert evaluate(capsys, *base, "--limit", "all")[1]["n"] == 60
    with pytest.raises(SystemExit):
        evaluate(capsys, *base, "--limit", "most")
    # A sweep run whose eval.limit is null evaluates every question: its evaluation reads
    # the run's config file, where null means all (no --limit on the command line).
    (tmp_path / "run.yaml").write_text("eval:\n  limit: null\n")
    run = ("--model", tiny_model_dir, "--data", test_file, "--out", tmp_path / "eval-run", "--params", "run.yaml")
    assert evaluate(capsys, *run)[1]["n"] == 60


def test_a_registered_model_resolves_in_the_given_store_from_any_folder(
    tiny_model_dir, tmp_path, monkeypatch, migrated_mlflow
):
    """`models:/NAME@alias` outside the project: the registry of the given store, not ./mlflow.db."""
    from mlflow import MlflowClient

    from stepjepa.tracking import download

    uri = migrated_mlflow(tmp_path / "store" / "mlflow.db")
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(tiny_model_dir), artifact_path="model")
    client.create_registered_model("sj")
    version = client.create_model_version("sj", f"runs:/{run_id}/model", run_id=run_id).version
    client.set_registered_model_alias("sj", "champion", version)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for name in ("MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    assert (download("models:/sj@champion", uri) / "config.json").is_file()
    assert not (elsewhere / "mlflow.db").exists()
    # Nothing global changes: processes started later (a sweep's `make run` in the same
    # shell or test session) must not register their models in this store.
    assert "MLFLOW_REGISTRY_URI" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ


def test_a_process_started_without_the_collector_has_it_back_once_the_model_is_in(
    tiny_model_dir, test_file, tmp_path, capsys, monkeypatch
):
    """`stepjepa evaluate` starts with the cyclic collector off (stepjepa/startup.py); with
    the model loaded, it is on again for the generation, the imports frozen."""
    with paused_collector(monkeypatch) as freezes:
        code, metrics, _ = evaluate(capsys, "--model", tiny_model_dir, "--data", test_file, "--limit", 2,
                                    "--out", tmp_path / "eval")  # fmt: skip
        assert code == 0 and metrics["n"] == 2
        assert gc.isenabled() and freezes == [1]
