"""Bad input to the DVC stages and the CLIs: one clear line naming the file, exit status 2,
never a traceback. Each case is a real process, as DVC or a user would run it (marked
`cli`: `make test-e2e` runs them, `make test-unit` does not)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GOOD = {"question": "q?", "answer": "a = 1\nb = 2\n#### 2"}

pytestmark = pytest.mark.cli


def run(args: list[str], cwd: Path, flags: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """`python [flags] -m args...` as a user runs it, in `cwd`."""
    env = os.environ | {"HF_HUB_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)} | env
    cmd = [sys.executable, *flags, "-m", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_clean_error(proc: subprocess.CompletedProcess, *named: str) -> str:
    """Exit 2, no traceback, and every string of `named` in stderr; returns stderr."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in named:
        assert text in proc.stderr, proc.stderr
    return proc.stderr


def params(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def stage(name: str, tmp_path: Path, params_file: Path, *inputs: str) -> list[str]:
    return [
        f"pipelines.{name}",
        "--params",
        str(params_file),
        *inputs,
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "metrics.json"),
    ]


def test_unknown_params_key_names_file_and_key(tmp_path):
    bad = params(tmp_path / "params.yaml", {"data": {"formatt": "x"}})
    err = assert_clean_error(run(stage("fetch", tmp_path, bad), tmp_path), f"fetch: error: {bad}", "data.formatt")
    assert len(err.strip().splitlines()) == 1


def test_fetch_from_a_missing_gsm8k_dir(tmp_path):
    ok = params(tmp_path / "params.yaml", {})
    proc = run(stage("fetch", tmp_path, ok), tmp_path, GSM8K_DIR=str(tmp_path / "nowhere"))
    assert_clean_error(proc, "fetch: error: GSM8K_DIR=", "train.jsonl")


def test_prepare_bad_record_with_on_bad_record_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "test"):
        (raw / f"{split}.jsonl").write_text(json.dumps(GOOD) + '\n{"question": "cut off\n')
    strict = params(tmp_path / "params.yaml", {"data": {"on_bad_record": "error"}})
    proc = run(stage("prepare", tmp_path, strict, "--raw", str(raw)), tmp_path)
    assert_clean_error(proc, f"prepare: error: {raw / 'train.jsonl'}:2: ", "not valid JSON")


def test_prepare_without_raw_files(tmp_path):
    ok = params(tmp_path / "params.yaml", {})
    proc = run(stage("prepare", tmp_path, ok, "--raw", str(tmp_path / "raw")), tmp_path)
    assert_clean_error(proc, f"prepare: error: {tmp_path / 'raw' / 'train.jsonl'}: No such file")


def test_tokenize_bad_record_names_file_record_and_field(tmp_path, tiny_model_dir, conversations):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    records = [conversations[0], conversations[1] | {"steps": "not a list"}]
    for split in ("train", "test"):
        (prepared / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = params(tmp_path / "params.yaml", {"model": {"name_or_path": str(tiny_model_dir)}})
    proc = run(stage("tokenize_data", tmp_path, cfg, "--prepared", str(prepared)), tmp_path)
    assert_clean_error(proc, f"tokenize: error: {prepared / 'train.jsonl'}: record {records[1]['id']}: field steps")


def test_tokenize_with_a_missing_model(tmp_path):
    cfg = params(tmp_path / "params.yaml", {"model": {"name_or_path": str(tmp_path / "no-model")}})
    proc = run(stage("tokenize_data", tmp_path, cfg, "--prepared", str(tmp_path)), tmp_path)
    assert_clean_error(proc, f"tokenize: error: {cfg}: model.name_or_path={tmp_path / 'no-model'}")


def test_build_model_bad_json_line_names_file_and_line(tmp_path):
    prepared = tmp_path / "train.jsonl"
    prepared.write_text('{"messages": []}\nnot json\n')
    proc = run(
        stage("build_model", tmp_path, params(tmp_path / "params.yaml", {}), "--prepared", str(prepared)), tmp_path
    )
    assert_clean_error(proc, f"build_model: error: {prepared}:2: not valid JSON")


def test_train_on_jsonl_says_it_is_not_parquet(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps(GOOD) + "\n")
    proc = run(
        [
            "stepjepa.cli",
            "train",
            "--params",
            str(params(tmp_path / "params.yaml", {})),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "run"),
            "--set",
            "train.tracking=none",
        ],
        tmp_path,
    )
    assert_clean_error(proc, f"--data {data}: not a Parquet file of tokenised rows", "data/tokenized/train.parquet")


@pytest.fixture
def rows(tmp_path) -> Path:
    """Two tokenised rows (docs/data-format.md), enough for inspect to pick one."""
    path = tmp_path / "train.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["train-000001", "train-000002"],
                "input_ids": [[1, 2, 3], [4, 5]],
                "labels": [[-100, 2, 3], [-100, 5]],
                "step1_span": [None, None],
                "step2_span": [None, None],
                "jepa_valid": [False, False],
            }
        ),
        path,
    )
    return path


def test_inspect_without_tokenised_data(tmp_path):
    proc = run(["stepjepa.cli", "inspect", "--k", "2"], tmp_path)
    assert_clean_error(proc, "stepjepa inspect: error: --data data/tokenized/train.parquet: no such file")


@pytest.mark.parametrize(
    "which, named",
    [
        (["--index", "5"], ["--index 5", "has 2 rows (valid indexes: 0 to 1)"]),
        (["--id", "nope"], ["--id 'nope'", "ids train-000001 .. train-000002"]),
    ],
)
def test_inspect_bad_index_or_id(tmp_path, rows, which, named):
    proc = run(["stepjepa.cli", "inspect", "--data", str(rows), *which], tmp_path)
    assert_clean_error(proc, str(rows), *named)


def test_inspect_with_a_missing_model_dir(tmp_path, rows):
    proc = run(["stepjepa.cli", "inspect", "--data", str(rows), "--model-dir", str(tmp_path / "no-model")], tmp_path)
    assert_clean_error(proc, f"--model-dir {tmp_path / 'no-model'}: cannot load the tokenizer")


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    """`stepjepa ... | head` closes stdout early; the command must stop quietly (status 141, as SIGPIPE)."""
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(json.dumps({"completion": "\\boxed{2}", "answer": "#### 2"}) + "\n")
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepjepa.cli", "score", str(predictions)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()  # the reader is gone before the command writes
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


# ---- issue 19: bad data and training input, each one line naming its source ---------


def test_prepare_names_the_line_of_a_non_utf8_byte(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "test"):
        (raw / f"{split}.jsonl").write_bytes(
            json.dumps(GOOD).encode() + b'\n{"question": "caf\xe9?", "answer": "#### 1"}\n'
        )
    strict = params(tmp_path / "params.yaml", {"data": {"on_bad_record": "error"}})
    proc = run(stage("prepare", tmp_path, strict, "--raw", str(raw)), tmp_path)
    assert_clean_error(proc, f"prepare: error: {raw / 'train.jsonl'}:2: ", "not valid UTF-8: byte 0xe9")


def test_prepare_skips_a_non_utf8_line_and_counts_it(tmp_path):
    # In-process (the stage's split layout is another issue's): the skip is counted, named.
    from stepjepa.config import DataConfig
    from stepjepa.data.prepare import prepare_file

    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"question": "caf\xe9?"}\n')
    records, stats = prepare_file(path, "train", DataConfig())
    assert len(records) == 1 and stats.as_dict()["skipped_by_reason"] == {"malformed_json": 1}
    [message] = stats.examples
    assert message.startswith(f"{path}:2: ") and "not valid UTF-8: byte 0xe9 at column 18" in message


def test_train_with_a_hub_id_offline_names_the_key(tmp_path, rows):
    cfg = params(
        tmp_path / "params.yaml",
        {"model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}, "train": {"lambda": 0, "k": 0, "tracking": "none"}},
    )
    proc = run(
        ["stepjepa.cli", "train", "--params", str(cfg), "--data", str(rows), "--out", str(tmp_path / "run")],
        tmp_path,
        HF_HOME=str(tmp_path / "hf"),
    )
    err = assert_clean_error(proc, "model.name_or_path=Qwen/Qwen2.5-0.5B-Instruct", "HF_HUB_OFFLINE")
    assert len([line for line in err.splitlines() if "model.name_or_path" in line]) == 1


@pytest.mark.parametrize("how", ["file", "override"])
def test_an_infinite_lambda_is_rejected(tmp_path, rows, how):
    tree = {"train": {"lambda": float("inf")}} if how == "file" else {}
    cfg = params(tmp_path / "params.yaml", tree)
    extra = ["--set", "train.lambda=.inf"] if how == "override" else []
    proc = run(
        ["stepjepa.cli", "train", "--params", str(cfg), "--data", str(rows), "--out", str(tmp_path / "run"), *extra],
        tmp_path,
    )
    assert_clean_error(proc, str(cfg), "train.lambda", "finite number")


def test_tokenize_warns_when_max_length_drops_most_jepa_pairs(tmp_path, tiny_model_dir, conversations):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    for split in ("train", "validation", "test"):  # validation: where main's prepare writes one
        (prepared / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in conversations[:40]))
    cfg = params(
        tmp_path / "params.yaml", {"model": {"name_or_path": str(tiny_model_dir)}, "tokenize": {"max_length": 64}}
    )
    proc = run(stage("tokenize_data", tmp_path, cfg, "--prepared", str(prepared)), tmp_path)
    assert proc.returncode == 0, proc.stderr
    lost = json.loads((tmp_path / "metrics.json").read_text())["train"]["invalid_by_reason"]["truncated_in_step2"]
    assert lost >= 20
    assert f"{prepared / 'train.jsonl'}: tokenize.max_length=64 cuts Step 2 of {lost} of 40 rows" in proc.stderr


def test_train_rejects_k_beyond_the_models_positions(tmp_path, tiny_model_dir, conversations):
    from tests.support.train import write_params, write_tokenized

    data = write_tokenized(tiny_model_dir, conversations[:8], tmp_path / "train.parquet")
    cfg = write_params(tmp_path / "params.yaml", tiny_model_dir, k=500)  # the tiny model has 512 positions
    proc = run(
        ["stepjepa.cli", "train", "--params", str(cfg), "--data", str(data), "--out", str(tmp_path / "run")], tmp_path
    )
    assert_clean_error(proc, "train.k=500", "max_position_embeddings=512")


def test_fetch_without_gsm8k_dir_offline_says_what_to_set(tmp_path):
    """A clone without ../shared and with the hub off: one line naming GSM8K_DIR and HF_HUB_OFFLINE."""
    env = {k: v for k, v in os.environ.items() if k != "GSM8K_DIR"} | {"HF_HUB_OFFLINE": "1"}
    (tmp_path / "params.yaml").write_text("data: {}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.fetch",
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(tmp_path / "raw"),
            "--metrics",
            str(tmp_path / "fetch.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("fetch: error: GSM8K: GSM8K_DIR is not set") and "HF_HUB_OFFLINE=0" in line


def test_prepare_with_an_empty_train_split_fails_naming_the_file(tmp_path):
    """A train file with no usable record is an error (exit 2, one line), not an empty split."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "train.jsonl").write_text('{"question": "broken"\n')
    (raw / "test.jsonl").write_text(json.dumps({"question": "q?", "answer": "a = 1\nb = 2\n#### 2"}) + "\n")
    (tmp_path / "params.yaml").write_text("data: {validation_size: 1}\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.prepare",
            "--params",
            str(tmp_path / "params.yaml"),
            "--raw",
            str(raw),
            "--out",
            str(tmp_path / "prepared"),
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = [line for line in proc.stderr.strip().splitlines() if line.startswith("prepare: error:")]
    assert f"{raw / 'train.jsonl'}: no usable records (1 lines read, 1 skipped" in line


# ---- bad arguments and params answer before torch, transformers and MLflow load ---------

HEAVY = ("torch", "transformers", "accelerate", "peft", "mlflow", "prefect")
INFINITE_LAMBDA = ["--params", "{tmp}/inf.yaml", "--data", "{tmp}/rows.parquet", "--out", "{tmp}/run"]
TRAIN = ["--params", "{tmp}/ok.yaml", "--out", "{tmp}/run"]
HUB_MODEL = ["--params", "{tmp}/hub.yaml", "--out", "{tmp}/run"]
NO_MODEL = ["--params", "{tmp}/no-model.yaml", "--out", "{tmp}/run"]
SHORT_MODEL = ["--params", "{tmp}/short.yaml", "--out", "{tmp}/run"]


@pytest.mark.parametrize(
    "args, status, named",
    [
        (["stepjepa.training.train", "--help"], 0, []),
        (["stepjepa.training.train", *INFINITE_LAMBDA], 2, ["train.lambda", "finite number"]),
        (["stepjepa.cli", "train", *INFINITE_LAMBDA], 2, ["train.lambda", "finite number"]),
        (["stepjepa.cli", "inspect", "--data", "{tmp}/rows.parquet"], 2, ["--data {tmp}/rows.parquet: no such file"]),
        (["stepjepa.cli", "evaluate", "--help"], 0, []),
        (["stepjepa.cli", "resend", "--help"], 0, []),
        (["pipelines.build_model", "--params", "{tmp}/inf.yaml", "--prepared", "{tmp}/p.jsonl"], 2, ["train.lambda"]),
        (["pipelines.tokenize_data", "--params", "{tmp}/inf.yaml", "--prepared", "{tmp}"], 2, ["train.lambda"]),
        (
            ["stepjepa.cli", "train", *TRAIN, "--data", "{tmp}/rows.jsonl"],
            2,
            ["--data {tmp}/rows.jsonl: not a Parquet"],
        ),
        (["stepjepa.cli", "train", *TRAIN, "--data", "{tmp}/none.parquet"], 2, ["--data {tmp}/none.parquet: no such"]),
        (
            ["stepjepa.cli", "train", *HUB_MODEL, "--data", "{tmp}/train.parquet"],
            2,
            ["Qwen/Qwen2.5-0.5B", "HF_HUB_OFF"],
        ),
        (["stepjepa.cli", "train", *NO_MODEL, "--data", "{tmp}/train.parquet"], 2, ["name_or_path={tmp}/no-model"]),
        (["stepjepa.cli", "train", *SHORT_MODEL, "--data", "{tmp}/train.parquet"], 2, ["max_position_embeddings=2"]),
        (["stepjepa.cli", "inspect", "--data", "{tmp}/train.parquet", "--model-dir", "{tmp}/no-model"], 2, ["no such"]),
        (["pipelines.tokenize_data", "--params", "{tmp}/no-model.yaml", "--prepared", "{tmp}"], 2, ["{tmp}/no-model"]),
        (["pipelines.tokenize_data", "--params", "{tmp}/short.yaml", "--prepared", "{tmp}/bad"], 2, ["field steps"]),
    ],
    ids=[
        "train-help",
        "train-params",
        "cli-train-params",
        "inspect-data",
        "evaluate-help",
        "resend-help",
        "build_model-params",
        "tokenize-params",
        "train-jsonl-data",
        "train-missing-data",
        "train-hub-id-offline",
        "train-missing-model",
        "train-k-past-positions",
        "inspect-missing-model",
        "tokenize-missing-model",
        "tokenize-bad-record",
    ],
)
def test_bad_input_and_help_answer_before_the_heavy_imports(tmp_path, rows, args, status, named):
    """A typo in params.yaml, `--help`, a wrong `--data`, a model that is not there (a folder,
    or a hub id not in the HF cache with the hub off), a K past the model's positions (its
    config.json) or a bad prepared record answers in a fraction of a second: the process never
    imports torch and co. (`-X importtime` names every module it imported)."""
    params(tmp_path / "inf.yaml", {"train": {"lambda": float("inf")}})
    params(tmp_path / "ok.yaml", {"train": {"tracking": "none"}})
    params(tmp_path / "hub.yaml", {"model": {"name_or_path": "Qwen/Qwen2.5-0.5B-Instruct"}})
    params(tmp_path / "no-model.yaml", {"model": {"name_or_path": str(tmp_path / "no-model")}})
    params(tmp_path / "short.yaml", {"model": {"name_or_path": str(tmp_path / "short")}, "train": {"k": 2}})
    (tmp_path / "short").mkdir()  # a model folder whose config.json allows 2 positions; rows have 3 tokens
    (tmp_path / "short" / "config.json").write_text(json.dumps({"max_position_embeddings": 2}))
    (tmp_path / "rows.jsonl").write_text(json.dumps(GOOD) + "\n")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.jsonl").write_text(json.dumps({"id": "r1", "steps": "x", "messages": []}) + "\n")
    args = [a.format(tmp=tmp_path) for a in args]
    if args[0].startswith("pipelines."):
        args += ["--out", str(tmp_path / "out"), "--metrics", str(tmp_path / "metrics.json")]
    proc = run(args, tmp_path, flags=("-X", "importtime"), HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == status, proc.stderr[-2000:]
    for text in (t.format(tmp=tmp_path) for t in named):
        assert text in proc.stderr, proc.stderr[-2000:]
    imported = {line.rpartition("|")[2].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "stepjepa.config" in imported  # the probe sees the imports at all
    assert not sorted({m.split(".")[0] for m in imported} & set(HEAVY))


@pytest.mark.parametrize("args", [["--reconcile"], []], ids=["reconcile", "stage"])
def test_a_sweep_without_the_data_stages_outputs_trains_nothing_and_says_so(tmp_path, migrated_mlflow, args):
    """A fresh clone that ran the sweep (or `make run`'s reconcile) before `dvc repro` or `dvc
    pull`: one line naming the missing files and what makes them, exit 2, no run trained and
    the committed report left as it was (it became a table of ten failed runs after ten
    training processes)."""
    project = tmp_path / "clone"
    shutil.copytree(ROOT / "metrics", project / "metrics")
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    before = {p: p.read_bytes() for p in (project / "metrics").rglob("*") if p.is_file()}
    proc = run(["pipelines.sweep", *args], project, MLFLOW_TRACKING_URI=migrated_mlflow(tmp_path / "mlflow.db"))
    assert_clean_error(
        proc, "data/tokenized/train.parquet", "data/prepared/validation.jsonl", "dvc repro", "nothing was trained"
    )
    assert not (project / "runs").exists()
    assert {p: p.read_bytes() for p in (project / "metrics").rglob("*") if p.is_file()} == before
