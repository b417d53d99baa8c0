"""The arith task generator (stepjepa/data/arith.py): deterministic, arithmetically right,
GSM8K-shaped, no question repeated within or across splits."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stepjepa.config import ArithConfig, ConfigError, DataConfig, config_from_dict
from stepjepa.data.arith import ArithSpaceError, generate, write_splits
from stepjepa.data.sources import fetch
from stepjepa.data.steps import split_record
from tests.support.projects import ROOT

ANNOTATION = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}

configs = st.builds(
    ArithConfig,
    train_size=st.integers(1, 30),
    test_size=st.integers(1, 15),
    seed=st.integers(0, 2**32),
    min_steps=st.integers(1, 2),
    max_steps=st.integers(2, 4),
    max_operand=st.integers(2, 12),
    max_value=st.integers(20, 120),
    operations=st.lists(st.sampled_from("+-*/"), min_size=1, max_size=4, unique=True).map(tuple),
)
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


def _generate(cfg: ArithConfig) -> dict[str, list[dict]]:
    try:
        return generate(cfg)
    except ArithSpaceError:  # e.g. only "/" with few divisible values: tested on its own below
        assume(False)


def _calculations(answer: str) -> list[tuple[int, str, int, int]]:
    """(a, op, b, result) of each step line, in order; every line must carry exactly one."""
    lines = answer.splitlines()[:-1]
    found = [ANNOTATION.findall(line) for line in lines]
    assert all(len(f) == 1 for f in found), answer
    return [(int(a), op, int(b), int(r)) for ((a, op, b, r),) in found]


@fast
@given(configs)
def test_same_seed_same_bytes(tmp_path_factory, cfg):
    _generate(cfg)
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    first, second = write_splits(cfg, a), write_splits(cfg, b)
    for split in ("train", "test"):
        assert first[split].read_bytes() == second[split].read_bytes()


@fast
@given(configs)
def test_every_annotation_is_right_and_steps_chain(cfg):
    for records in _generate(cfg).values():
        for record in records:
            calcs = _calculations(record["answer"])
            assert cfg.min_steps <= len(calcs) <= cfg.max_steps
            previous = None
            for a, op, b, result in calcs:
                if op == "/":  # exact division only: no remainders, no fractions
                    assert b and a % b == 0 and result == a // b
                else:
                    assert result == OPS[op](a, b)
                assert 1 <= result <= cfg.max_value and b <= cfg.max_operand and op in cfg.operations
                assert previous is None or a == previous, "each step starts from the previous result"
                previous = result


@fast
@given(configs)
def test_final_answer_is_the_last_steps_value(cfg):
    for records in _generate(cfg).values():
        for record in records:
            final = record["answer"].splitlines()[-1]
            assert final.startswith("#### ")
            assert int(final.removeprefix("#### ")) == _calculations(record["answer"])[-1][3]


@fast
@given(configs)
def test_questions_unique_within_and_across_splits(cfg):
    splits = _generate(cfg)
    assert [len(splits["train"]), len(splits["test"])] == [cfg.train_size, cfg.test_size]
    questions = [r["question"] for records in splits.values() for r in records]
    assert len(set(questions)) == len(questions)


def test_default_size_splits_are_disjoint():
    splits = generate(ArithConfig())
    train = {r["question"] for r in splits["train"]}
    test = {r["question"] for r in splits["test"]}
    assert len(train) == ArithConfig().train_size and len(test) == ArithConfig().test_size
    assert not train & test


def test_records_read_like_gsm8k():
    """prepare's own splitter takes them unchanged: one step per line, gold after ####."""
    for record in generate(ArithConfig(train_size=50, test_size=1))["train"]:
        solution = split_record(record, "gsm8k", keep_annotations=False)
        lines = record["answer"].splitlines()
        assert len(solution.steps) == len(lines) - 1 and solution.gold == lines[-1][5:]
        assert not any("<<" in step for step in solution.steps)
        assert solution.question.endswith("?")


def test_too_small_a_space_is_a_one_line_config_error():
    # Halving from at most 4 allows two steps (4 -> 2 -> 1), never the three asked for.
    cfg = ArithConfig(train_size=5, test_size=5, min_steps=3, max_operand=2, max_value=4, operations=("/",))
    with pytest.raises(ConfigError, match=r"^data\.arith: found only 0 distinct problems of the 10 "):
        generate(cfg)


def test_arith_params_are_validated_by_dotted_key():
    with pytest.raises(ConfigError, match=r"data\.source"):
        config_from_dict({"data": {"source": "mnist"}})
    with pytest.raises(ConfigError, match=r"data\.arith\.operations"):
        config_from_dict({"data": {"arith": {"operations": ["%"]}}})
    with pytest.raises(ConfigError, match=r"min_steps must be <= data\.arith\.max_steps"):
        config_from_dict({"data": {"arith": {"min_steps": 4, "max_steps": 3}}})
    assert DataConfig().source == "gsm8k", "GSM8K stays the default"


def test_fetch_arith_writes_splits_and_provenance(tmp_path):
    cfg = DataConfig(source="arith", arith=ArithConfig(train_size=20, test_size=5, seed=3))
    provenance = fetch(cfg, tmp_path)
    assert provenance["source"] == "arith"
    assert provenance["arith"] == cfg.arith.model_dump(mode="json")
    assert {s: f["lines"] for s, f in provenance["files"].items()} == {"train": 20, "test": 5}
    assert fetch(cfg, tmp_path / "again")["files"] == provenance["files"], "same params, same sha256"


@pytest.mark.cli
def test_fetch_stage_reports_an_impossible_size_in_one_line(tmp_path):
    import subprocess
    import sys

    import yaml

    arith = {"train_size": 5, "test_size": 5, "min_steps": 3, "max_operand": 2, "max_value": 4, "operations": ["/"]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "arith", "arith": arith}}))
    cmd = [
        sys.executable,
        "-m",
        "pipelines.fetch",
        "--params",
        str(tmp_path / "params.yaml"),
        "--out",
        str(tmp_path / "raw"),
        "--metrics",
        str(tmp_path / "fetch.json"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "fetch: error: data.arith: found only 0 distinct problems of the 10 asked for (train_size + test_size); "
        "raise max_value, max_operand or max_steps, or ask for fewer"
    ]
