"""`stepjepa compare`: a rerun's verdicts against a committed result, on made-up records."""

import json

import pytest

from stepjepa import cli
from stepjepa.sweep.compare import compare, main
from stepjepa.sweep.report import summarize, verdict_records
from tests.support.sweep_results import fake_results, fake_study

COMMITTED = [
    {
        "config": "k1_lam0.1",
        "against": "sft",
        "verdict": "better",
        "delta": 0.12,
        "ci_low": 0.05,
        "ci_high": 0.19,
        "paired_seeds": 5,
    },
    {
        "config": "k2_lam0.1",
        "against": "sft",
        "verdict": "no significant difference",
        "delta": 0.01,
        "ci_low": -0.03,
        "ci_high": 0.05,
        "paired_seeds": 5,
    },
    {
        "config": "k2_lam0.1",
        "against": "base",
        "verdict": "no significant difference",
        "delta": -0.11,
        "ci_low": -0.3,
        "ci_high": 0.08,
        "paired_seeds": 5,
    },
    {"config": "k1_lam2", "against": "sft", "verdict": "too few seeds to tell", "delta": 0.2, "paired_seeds": 1},
]


def _changed(**changes) -> list[dict]:
    """COMMITTED with `changes[i] = {field: value}` applied to record i."""
    return [r | changes.get(f"r{i}", {}) for i, r in enumerate(COMMITTED)]


def test_the_same_verdicts_and_overlapping_intervals_reproduce():
    rerun = _changed(
        r0={"delta": 0.17, "ci_low": 0.18, "ci_high": 0.25},
        r1={"delta": 0.04, "ci_low": 0.0, "ci_high": 0.08},
        r3={"delta": -0.4},
    )  # no interval: only the verdict counts
    findings = compare(rerun, COMMITTED)
    assert [f.key for f in findings] == ["k1_lam0.1", "k2_lam0.1", "k2_lam0.1 vs base", "k1_lam2"]
    assert all(f.reproduced for f in findings) and findings[0].text.startswith("reproduced: better +0.170")


@pytest.mark.parametrize(
    "changes, key, text",
    [
        (
            {"r0": {"verdict": "no significant difference"}},
            "k1_lam0.1",
            "verdict changed: better +0.120 [+0.050, +0.190] -> no",
        ),
        ({"r1": {"ci_low": 0.06, "ci_high": 0.1}}, "k2_lam0.1", "interval no longer overlaps"),
        ({"r2": {"ci_low": -0.5, "ci_high": -0.31}}, "k2_lam0.1 vs base", "interval no longer overlaps"),
        ({"r3": {"verdict": "failed"}}, "k1_lam2", "verdict changed: too few seeds to tell +0.200 -> failed"),
    ],
)
def test_a_flipped_verdict_or_a_moved_interval_is_reported(changes, key, text):
    findings = {f.key: f for f in compare(_changed(**changes), COMMITTED)}
    assert not findings[key].reproduced and findings[key].text.startswith(text)
    assert all(f.reproduced for k, f in findings.items() if k != key)


def test_missing_and_extra_comparisons_do_not_reproduce():
    rerun = COMMITTED[1:] + [{"config": "k3_lam0.1", "against": "sft", "verdict": "better"}]
    findings = compare(rerun, COMMITTED)
    assert [(f.key, f.reproduced) for f in findings if not f.reproduced] == [("k1_lam0.1", False), ("k3_lam0.1", False)]
    assert findings[0].text.startswith("missing from the new result") and "not in the committed" in findings[-1].text


def test_the_command_prints_one_line_per_comparison_and_exits_1_on_a_change(tmp_path, capsys):
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "verdicts.json").write_text(json.dumps(COMMITTED))
    (tmp_path / "old.json").write_text(json.dumps(COMMITTED))
    assert cli.main(["compare", str(tmp_path / "new"), str(tmp_path / "old.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[-1].startswith("4 of 4 comparisons reproduced")
    (tmp_path / "old.json").write_text(json.dumps(_changed(r0={"verdict": "worse"})))
    assert main([str(tmp_path / "new"), str(tmp_path / "old.json")]) == 1
    assert "k1_lam0.1: verdict changed: worse" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), ("{", "not a readable JSON"), ('{"selected": "sft"}', "expected a list of records")],
)
def test_an_unreadable_result_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    (tmp_path / "new.json").write_text(json.dumps(COMMITTED))
    if content is not None:
        (tmp_path / "verdicts.json").write_text(content)
    assert main([str(tmp_path / "new.json"), str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(tmp_path / "verdicts.json") in err


def test_the_help_says_what_reproduced_means_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "reproduced" in text and "overlap" in text and "0 when every comparison is reproduced, 1 otherwise" in text


def test_a_sweeps_verdict_records_reproduce_themselves_and_hold_every_comparison():
    records = verdict_records(summarize(fake_results(seeds=(0, 1, 2, 3), fail="k1_lam2")))
    assert [(r["config"], r["verdict"]) for r in records] == [
        ("k1_lam0.5", "no significant difference"),
        ("k1_lam2", "failed"),
        ("k2_lam0.5", "better"),
        ("k2_lam2", "no significant difference"),
    ]
    better = records[2]
    assert better["ci_low"] <= better["delta"] <= better["ci_high"] and 0 < better["ci_low"]
    assert better["p"] <= better["p_holm"] <= 0.05 and better["paired_seeds"] == 4
    assert all(f.reproduced for f in compare(json.loads(json.dumps(records)), records))
    study = verdict_records(summarize(fake_study()))
    vs_base = {r["config"]: r for r in study if r["against"] == "base"}
    assert set(vs_base) == {"k2_lam0.1", "k1_lam0.5", "k1_lam0.1_loss-mse"}
    assert (vs_base["k1_lam0.1_loss-mse"]["factor"], vs_base["k1_lam0.1_loss-mse"]["level"]) == ("loss", "mse")
