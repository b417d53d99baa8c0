"""The training run: config checks, step plan, every layout, NaN stop, and end-to-end runs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stepjepa.config import ConfigError
from stepjepa.method.batching import step_plan
from stepjepa.training import loop
from stepjepa.training.loop import TrainingError, jepa_draw
from stepjepa.training.train import main, train
from tests.support.train import make_config, write_params, write_tokenized

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def train_data(tiny_model_dir, conversations, tmp_path_factory) -> Path:
    return write_tokenized(tiny_model_dir, conversations[:64], tmp_path_factory.mktemp("data") / "train.parquet")


# --- (c) bad configs and data fail before training, naming the param -------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.k=-1", "train.k"),
        ("train.lambda=-0.5", "train.lambda"),
        ("train.layout=diagonal", "train.layout"),
        ("train.jepa_ratio=1.5", "train.jepa_ratio"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.scheduler=step", "train.scheduler"),
        ("train.precision=fp8", "train.precision"),
        ("train.lamda=1", "train.lamda"),
    ],
)
def test_bad_config_is_rejected_naming_the_param(tiny_model_dir, train_data, tmp_path, caplog, override, key):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir)
    argv = ["--params", str(params), "--set", override, "--data", str(train_data), "--out", str(tmp_path / "run")]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert key in caplog.text
    assert not (tmp_path / "run").exists()


def test_lambda_without_any_jepa_pair_names_max_length(tiny_model_dir, conversations, tmp_path):
    short = write_tokenized(tiny_model_dir, conversations[:8], tmp_path / "short.parquet", max_length=24)
    with pytest.raises(ConfigError, match="tokenize.max_length"):
        train(make_config(tiny_model_dir, **{"lambda": 0.1}), short, tmp_path / "run")
    train(make_config(tiny_model_dir, **{"lambda": 0.0}, k=0, max_steps=1), short, tmp_path / "sft")  # SFT is fine


def test_data_of_another_tokenizer_is_rejected(tiny_model_dir, train_data, tmp_path):
    table = pq.read_table(train_data).slice(0, 4)
    ids = [[*row[:-1], 10**6] for row in table.column("input_ids").to_pylist()]
    table = table.set_column(table.column_names.index("input_ids"), "input_ids", pa.array(ids, pa.list_(pa.int32())))
    pq.write_table(table, tmp_path / "other.parquet")
    with pytest.raises(ConfigError, match="model.name_or_path"):
        train(make_config(tiny_model_dir), tmp_path / "other.parquet", tmp_path / "run")


# --- the step plan and the JEPA-ratio draw ---------------------------------------------


def test_step_plan_splits_steps_over_processes_without_overlap():
    lengths = [10 + i % 7 for i in range(50)]
    kwargs = dict(batch_size=4, grad_accum_steps=2, epochs=2, max_steps=None, seed=3, num_processes=2)
    plans = [step_plan(lengths, process_index=p, **kwargs) for p in (0, 1)]
    assert len(plans[0]) == len(plans[1]) > 0
    assert all(len(step) == 2 for step in plans[0][:-1])
    for step0, step1 in zip(*plans):
        seen0, seen1 = {i for b in step0 for i in b}, {i for b in step1 for i in b}
        assert not seen0 & seen1
    assert plans[0] == step_plan(lengths, process_index=0, **kwargs)  # deterministic
    assert len(step_plan(lengths, **(kwargs | {"max_steps": 3, "num_processes": 1}))) == 3
    single = step_plan(lengths, **(kwargs | {"num_processes": 1, "epochs": 1}))
    assert sorted(i for step in single for b in step for i in b) == list(range(50))


def test_jepa_draw_is_seeded_per_step():
    assert all(jepa_draw(0, s, 0.0) and jepa_draw(0, s, 1.0) for s in range(1, 50))
    draws = [jepa_draw(0, s, 0.5) for s in range(1, 401)]
    assert 150 < sum(draws) < 250
    assert draws == [jepa_draw(0, s, 0.5) for s in range(1, 401)]


# --- every layout and option runs -----------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"layout": "inline", "k": 2, "finetune": "full"},
        {"layout": "packed", "k": 1, "finetune": "lora", "lora_r": 4, "loss": "infonce"},
        {"layout": "two_pass", "k": 3, "finetune": "full", "loss": "mse", "precision": "bf16"},
        {
            "layout": "inline",
            "k": 0,
            "lambda": 0.0,
            "grad_accum_steps": 2,
            "activation_checkpointing": True,
            "scheduler": "constant",
            "max_grad_norm": None,
        },
    ],
)
def test_each_layout_and_option_trains(tiny_model_dir, train_data, tmp_path, options):
    cfg = make_config(tiny_model_dir, max_steps=3, **({"lambda": 0.5} | options))
    result = train(cfg, train_data, tmp_path / "run")
    assert result.steps == 3 and [m["step"] for m in result.history] == [2, 3]
    last = result.history[-1]
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert ("jepa_loss" in last) == (cfg.train.lambda_ > 0)
    assert (result.model_dir / "model.safetensors").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_non_finite_loss_stops_the_run_naming_the_step(tiny_model_dir, train_data, tmp_path, monkeypatch, caplog):
    real = loop.step_jepa_forward
    calls = []

    def nan_on_third(model, batch, **kwargs):
        out = real(model, batch, **kwargs)
        calls.append(1)
        return out if len(calls) < 3 else dataclasses.replace(out, loss=out.loss * float("nan"))

    monkeypatch.setattr(loop, "step_jepa_forward", nan_on_third)
    with pytest.raises(TrainingError, match="step 3: the loss is nan"):
        train(make_config(tiny_model_dir, max_steps=5), train_data, tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


# --- (a) end to end: learning, MLflow, a loadable model --------------------------------


@pytest.mark.e2e
def test_run_learns_and_is_tracked(tiny_model_dir, conversations, tmp_path, monkeypatch, migrated_mlflow):
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", migrated_mlflow(tmp_path / "mlflow.db"))
    data = write_tokenized(tiny_model_dir, conversations, tmp_path / "train.parquet")
    cfg = make_config(
        tiny_model_dir, k=2, **{"lambda": 0.5}, tracking="mlflow", log_model=True, log_every=5, experiment="e2e"
    )
    result = train(cfg, data, tmp_path / "run")
    first, last = result.history[0], result.history[-1]
    assert result.steps == 25
    assert last["lm_loss"] < first["lm_loss"] - 1.0
    assert last["jepa_loss"] < first["jepa_loss"] and last["mean_cos"] > first["mean_cos"]

    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.k"] == "2" and run.data.params["train.lambda"] == "0.5"
    assert {"loss", "lm_loss", "jepa_loss", "mean_cos", "lr", "grad_norm", "tokens_per_s"} <= run.data.metrics.keys()
    assert "git.commit" in run.data.tags and run.data.tags["model_uri"].startswith("models:/")
    assert any((tmp_path / "mlartifacts").rglob("MLmodel"))

    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    assert "<|predictor_2|>" in tok.get_vocab()
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Tina has 5 apples."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


# --- (b) kill -9 after the first checkpoint, then --resume -----------------------------


def _launch(params: Path, data: Path, out: Path, env: dict, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "stepjepa.training.train",
        "--params",
        str(params),
        "--data",
        str(data),
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _in_store(tmp_path: Path, step: int) -> bool:
    """Whether the sqlite store at `tmp_path` holds a `loss` point for `step` (read directly: fast)."""
    import sqlite3

    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(tmp_path / "mlflow.db")) as db:
        return bool(db.execute("SELECT 1 FROM metrics WHERE key = 'loss' AND step = ?", (step,)).fetchone())
    return False


@pytest.mark.e2e
def test_kill_and_resume_continues_the_same_run(tiny_model_dir, train_data, tmp_path, migrated_mlflow):
    import mlflow

    env = os.environ | {"MLFLOW_TRACKING_URI": migrated_mlflow(tmp_path / "mlflow.db")}
    params = write_params(
        tmp_path / "params.yaml",
        tiny_model_dir,
        batch_size=4,
        max_steps=12,
        checkpoint_every=3,
        tracking="mlflow",
        log_model=False,
        experiment="resume",
    )
    out = tmp_path / "run"
    killed = _launch(params, train_data, out, env)
    deadline = time.monotonic() + 120
    # Killed after logging step 4, past the step-3 checkpoint: the resumed run replays step 4.
    # MLflow gets metrics from a background thread after metrics.jsonl: wait for both.
    history_file = out / "metrics.jsonl"
    while not (history_file.is_file() and '"step": 4,' in history_file.read_text() and _in_store(tmp_path, 4)):
        assert killed.poll() is None, killed.stdout.read()
        assert time.monotonic() < deadline, "no step 4 within 120 s"
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (out / "model").exists(), "the run finished before it could be killed"
    saved = sorted((out / "checkpoints").glob("step-*/state.json"))[-1]
    state = json.loads(saved.read_text())

    resumed = _launch(params, train_data, out, env, "--resume")
    log_text, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, log_text
    assert re.search(rf"resuming from .*step-0*{state['step']} at step {state['step']}\b", log_text), log_text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["run_id"] == state["run_id"]
    runs = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).search_runs(
        [mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_experiment_by_name("resume").experiment_id]
    )
    assert [r.info.run_id for r in runs] == [state["run_id"]]
    assert runs[0].info.status == "FINISHED"
    history = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"]).get_metric_history(state["run_id"], "loss")
    # Every logged step once (log_every 2), step 4 included, which both attempts ran.
    assert sorted(m.step for m in history) == [2, 4, 6, 8, 10, 12]
    if state["step"] == 3:  # not when a slow poll let the step-6 checkpoint land first
        assert "steps up to 4 are already logged" in log_text, log_text


# --- several processes: DDP over two CPU processes equals gradient accumulation --------


@pytest.mark.e2e
def test_two_processes_match_one_process_with_accumulation(tiny_model_dir, train_data, tmp_path):
    """World 2 x 1 micro-batch and world 1 x 2 micro-batches see the same micro-batches
    per step (see batching.step_plan) and average the same gradients."""
    from safetensors.torch import load_file

    options = dict(k=2, **{"lambda": 0.5}, max_steps=4, batch_size=4, finetune="lora", lora_r=4)
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, **options)
    env = os.environ | {"ACCELERATE_USE_CPU": "true"}  # see cpu_2proc.yaml
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
        "-m",
        "stepjepa.training.train",
        "--params",
        str(params),
        "--data",
        str(train_data),
        "--out",
        str(tmp_path / "ddp"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    single = train(make_config(tiny_model_dir, **options, grad_accum_steps=2), train_data, tmp_path / "single")
    ddp_history = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["jepa_pairs"] for m in ddp_history] == [m["jepa_pairs"] for m in single.history]
    assert [m["lm_loss"] for m in ddp_history] == pytest.approx([m["lm_loss"] for m in single.history], rel=1e-5)
    expected, got = (
        load_file(str(single.model_dir / "model.safetensors")),
        load_file(str(tmp_path / "ddp" / "model" / "model.safetensors")),
    )
    assert all(torch.allclose(expected[k], got[k], atol=1e-5) for k in expected)


def test_resume_needs_the_same_training_config_only(tmp_path):
    """Evaluation and sweep settings may change between a kill and its resume; what trains may not."""
    from stepjepa.config import config_from_dict, resolved_tree
    from stepjepa.training.run import _check_same_config

    saved = resolved_tree(config_from_dict({"train": {"k": 2, "learning_rate": 1e-3}}))
    fine = config_from_dict(
        {
            "train": {"k": 2, "learning_rate": 1e-3, "log_every": 1},
            "eval": {"limit": None, "batch_size": 4},
            "sweep": {"max_concurrent": 2, "ks": [5]},
        }
    )
    _check_same_config(saved, fine, tmp_path / "step-000003")
    smaller_chunks = config_from_dict({"train": {"k": 2, "learning_rate": 1e-3, "lm_loss_chunk": 64}})
    _check_same_config(saved, smaller_chunks, tmp_path / "step-000003")  # memory only, not what trains
    del saved["train"]["lm_loss_chunk"]  # a checkpoint saved before the key existed
    _check_same_config(saved, fine, tmp_path / "step-000003")
    changed = config_from_dict({"train": {"k": 2, "learning_rate": 2e-3}})
    with pytest.raises(ConfigError, match=r"train\.learning_rate: 0\.001 -> 0\.002"):
        _check_same_config(saved, changed, tmp_path / "step-000003")


def test_a_resume_may_change_every_weight_neutral_training_key_but_the_experiment(tmp_path):
    """`config.WEIGHT_NEUTRAL_KEYS` decides; the resumed MLflow run stays in its experiment."""
    from stepjepa.config import WEIGHT_NEUTRAL_KEYS, config_from_dict, resolved_tree, set_dotted
    from stepjepa.training.run import RESUMABLE_CHANGES, _check_same_config

    assert RESUMABLE_CHANGES == {k for k in WEIGHT_NEUTRAL_KEYS if k.startswith("train.")} - {"train.experiment"}
    saved = resolved_tree(config_from_dict({}))
    tree: dict = {}
    for key, value in {
        "train.log_every": 5,
        "train.eval_every": 5,
        "train.checkpoint_every": 7,
        "train.keep_checkpoints": 3,
        "train.eval_examples": 9,
        "train.tracking": "none",
        "train.log_model": False,
    }.items():
        set_dotted(tree, key, value)
    _check_same_config(saved, config_from_dict(tree), tmp_path / "step-000003")
    with pytest.raises(ConfigError, match=r"train\.experiment"):
        _check_same_config(saved, config_from_dict({"train": {"experiment": "elsewhere"}}), tmp_path / "step-000003")


def test_evaluate_after_training_writes_what_the_evaluate_command_writes(
    tiny_model_dir, conversations, train_data, tmp_path, caplog
):
    """`stepjepa train --evaluate` (a sweep's validation step, in the training process) gives
    byte for byte the files a separate `stepjepa evaluate` of the saved model gives."""
    import yaml

    from stepjepa.cli import main as cli_main

    questions = tmp_path / "validation.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in conversations[:8]), encoding="utf-8")
    tree = yaml.safe_load(
        write_params(tmp_path / "params.yaml", tiny_model_dir, max_steps=3, k=2, **{"lambda": 0.5}).read_text()
    )
    tree["eval"] = {"limit": 6, "batch_size": 4, "max_new_tokens": 8}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tree))
    inside = tmp_path / "run" / "eval" / "validation"
    inside.mkdir(parents=True)
    (inside / "config.yaml").write_text(params.read_text())
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "--params",
                    str(params),
                    "--data",
                    str(train_data),
                    "--out",
                    str(tmp_path / "run"),
                    "--evaluate",
                    str(inside),
                    "--evaluate-data",
                    str(questions),
                    "--evaluate-heldout",
                    str(train_data),
                ]
            )
            == 0
        )
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluate validation ")]
    assert progress[-1].startswith("evaluate validation 6/6 ") and progress[-1].endswith("eta=0s")
    apart = tmp_path / "apart"
    assert (
        cli_main(
            [
                "evaluate",
                "--no-progress",
                "--model",
                str(tmp_path / "run" / "model"),
                "--params",
                str(inside / "config.yaml"),
                "--data",
                str(questions),
                "--out",
                str(apart),
                "--heldout",
                str(train_data),
            ]
        )
        == 0
    )
    for name in ["predictions.jsonl", "metrics.json", "heldout.jsonl"]:
        assert (inside / name).read_bytes() == (apart / name).read_bytes(), name
    assert json.loads((inside / "metrics.json").read_text())["n"] == 6


def test_a_failed_evaluation_after_training_keeps_the_run(tiny_model_dir, train_data, tmp_path, caplog):
    """The model is trained and saved even when the evaluation that follows cannot run; the
    exit code is 0 and the sweep evaluates in a process of its own (which reports in full)."""
    params = write_params(tmp_path / "params.yaml", tiny_model_dir, max_steps=2)
    inside = tmp_path / "run" / "eval" / "validation"
    inside.mkdir(parents=True)
    (inside / "config.yaml").write_text(params.read_text())
    with caplog.at_level(logging.INFO):
        assert (
            main(
                [
                    "--params",
                    str(params),
                    "--data",
                    str(train_data),
                    "--out",
                    str(tmp_path / "run"),
                    "--evaluate",
                    str(inside),
                    "--evaluate-data",
                    str(tmp_path / "missing.jsonl"),
                ]
            )
            == 0
        )
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert not (inside / "metrics.json").exists()
    assert any(
        "evaluation after training failed" in r.getMessage() and "missing.jsonl" in r.getMessage()
        for r in caplog.records
    )
