"""pipelines/study_report.py: `make study`'s page from the experiment's files."""

import json

import yaml

from pipelines.study_report import main


def test_the_page_has_the_design_the_tables_and_the_figures_but_not_the_reference(tmp_path, capsys):
    results, out = tmp_path / "outputs/study", tmp_path / "docs/results/study.md"
    results.mkdir(parents=True)
    sweep = {
        "ks": [1, 0],
        "lambdas": [0.1],
        "seeds": [0, 1, 2],
        "design": "one_at_a_time",
        "axes": {"loss": ["infonce", "mse"]},
    }
    (results / "params.yaml").write_text(
        yaml.safe_dump({"sweep": sweep, "train": {"max_steps": 360, "batch_size": 16}})
    )
    (results / "summary.json").write_text(
        json.dumps({"configs": 4, "failed_runs": 0, "selected": "k1_lam0.1", "verdict": "better"})
    )
    (results / "verdicts.json").write_text("[]")
    (results / "table.md").write_text("| config |\n|---|\n| sft |\n")
    (results / "effects.png").write_bytes(b"png")
    assert main(["--results", str(results), "--out", str(out), "--name", "arith-study-1"]) == 0
    page = out.read_text()
    assert "experiment `arith-study-1`" in page and "one_at_a_time" in page and "loss: infonce, mse" in page
    assert "| sft |" in page and "![seed-level effects" in page and "(study/effects.png)" in page
    assert "**Selected on validation**: k1_lam0.1 (verdict against SFT: better)" in page
    assert (out.parent / "study/effects.png").read_bytes() == b"png"
    assert not (out.parent / "study/verdicts.json").exists(), "the reference is committed by hand, not written"
    assert main(["--results", str(tmp_path / "nowhere"), "--out", str(out), "--name", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
