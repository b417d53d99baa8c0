"""The data stages under real DVC, in a temporary git repository."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.projects import copy_project
from tests.support.synthetic import synthetic_raw_record

pytestmark = pytest.mark.e2e


def run(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def project(tmp_path_factory, migrated_prefect):
    """A copy of the project (code, params, dvc.yaml) in a fresh git + DVC repo, with a
    small GSM8K-format source that includes a malformed line."""
    tmp = tmp_path_factory.mktemp("dvc")
    repo, source = tmp / "repo", tmp / "gsm8k"
    params = copy_project(repo, validation_size=10)
    # The sweep stage runs too; what these tests check is DVC's, so a two-run sweep of a
    # few steps will do (the default 10-config sweep made this module ~4 min of `make test`).
    params["train"] |= {"max_steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2, "eval_every": 2,
                        "eval_examples": 4}
    params["eval"] |= {"limit": 6, "max_new_tokens": 12, "batch_size": 6}
    params["sweep"] |= {"ks": [1], "lambdas": [0.5]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    rng = random.Random(1)
    source.mkdir()
    for split, n in [("train", 60), ("test", 20)]:
        lines = [json.dumps(synthetic_raw_record(rng)) for _ in range(n)]
        lines.insert(3, '{"question": "cut off')
        (source / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    env = os.environ | {
        "GSM8K_DIR": str(source),
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo),
        "PREFECT_HOME": migrated_prefect(tmp / "prefect-home"),  # the sweep stage's temporary server
    }
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    return repo, env


def test_repro_builds_every_output_and_accounts_for_every_record(project):
    repo, env = project
    out = run(["dvc", "repro"], repo, env)
    for stage in ["fetch", "prepare", "build_model", "tokenize"]:
        assert f"Running stage '{stage}'" in out
    prepare = json.loads((repo / "metrics/prepare.json").read_text())
    assert prepare["train"] | {"skip_examples": None} == {
        "read": 61, "kept": 60, "kept_lm_only": 0, "dropped_short": 0, "skipped": 1,
        "skipped_by_reason": {"malformed_json": 1}, "skip_examples": None, "training_records": 50,
    }
    assert prepare["validation"]["records"] == 10
    assert "data/raw/train.jsonl:4:" in prepare["train"]["skip_examples"][0]
    tokenize = json.loads((repo / "metrics/tokenize.json").read_text())
    assert tokenize["test"]["count"] == 20 and tokenize["validation"]["count"] == 10
    assert (repo / "models/tiny/model.safetensors").is_file()
    assert (repo / "data/tokenized/train.parquet").is_file()


def test_metrics_show_is_the_sweeps_table_and_data_statistics_stay_readable(project):
    """`dvc metrics show` holds the experiment's results only (issue 18: the data stages'
    statistics made it one 1,483-character table of ~66 mostly empty columns); the
    statistics are committed outs, shown on request with `dvc metrics show FILE`."""
    repo, env = project
    listed = run(["dvc", "metrics", "show"], repo, env)
    for stage in ["fetch", "prepare", "build_model", "tokenize"]:
        assert f"metrics/{stage}.json" not in listed
    asked = run(["dvc", "metrics", "show", "metrics/tokenize.json"], repo, env)
    assert "metrics/tokenize.json" in asked and "test.count" in asked


def test_second_repro_is_a_noop(project):
    repo, env = project
    out = run(["dvc", "repro"], repo, env)
    assert "Running stage" not in out


def test_param_change_reruns_only_what_it_affects(project):
    repo, env = project
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["tokenize"]["max_length"] = 128
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    out = run(["dvc", "repro"], repo, env)
    assert "Running stage 'tokenize'" in out
    for stage in ["fetch", "prepare", "build_model"]:
        assert f"Running stage '{stage}'" not in out
    assert json.loads((repo / "metrics/tokenize.json").read_text())["train"]["truncated"] > 0
