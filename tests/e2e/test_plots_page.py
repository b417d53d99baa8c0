"""The DVC plots page in a real browser: `make plots`'s entry point on sweep plot data in a
temporary git + DVC repo, opened offline in headless Chromium (Debian's `chromium`)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from stepjepa.sweep.plots import VEGA_LIBS, offline_page_template, plot_effects, plot_heatmap, plot_loss_curves
from stepjepa.sweep.report import summarize, write_plot_data
from stepjepa.sweep.specs import RunResult
from tests.support.chromium import CHROMIUM_FLAGS, chromium, run_in_group
from tests.support.sweep_results import fake_results

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".cache/vega/node_modules"
SCREENSHOT = Path("/tmp/plots_page.png")


def test_template_inlines_vega_and_names_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="vega-lite/build/vega-lite.min.js"):
        offline_page_template(tmp_path)
    for lib in VEGA_LIBS:
        (tmp_path / lib).parent.mkdir(parents=True)
        (tmp_path / lib).write_text(f"/* {lib} */")
    page = offline_page_template(tmp_path)
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page and "cdn" not in page.lower()
    assert [page.index(f"/* {lib} */") for lib in VEGA_LIBS] == sorted(page.index(f"/* {lib} */") for lib in VEGA_LIBS)


def _sweep_repo(path: Path) -> tuple[list[dict], list[RunResult]]:
    """A git + DVC repo with the project's plot definitions and templates and a sweep's plot data."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    dvc_yaml = {"stages": {"sweep": {"cmd": "true", "plots": spec["stages"]["sweep"]["plots"]}}, "plots": spec["plots"]}
    (path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml, sort_keys=False))
    # curves apart; in-training evaluations on odd steps only (null between)
    results = [
        dataclasses.replace(
            r,
            history=[
                h
                | {
                    "lm_loss": h["lm_loss"] + 0.1 * i,
                    "val_step2_nll": None if h["step"] % 2 == 0 else h["val_step2_nll"] + 0.05 * i,
                }
                for h in r.history
            ],
        )
        for i, r in enumerate(fake_results())
    ]
    rows = summarize(results)
    sweep = path / "metrics/sweep"
    write_plot_data(rows, results, sweep)
    plot_heatmap(rows, sweep / "heatmap.png")
    plot_loss_curves(results, sweep / "loss_curves.png")
    plot_effects(rows, sweep / "effects.png")
    return rows, results


def _chromium(env: dict, tmp: Path, *args: str) -> str:
    return chromium(CHROMIUM_FLAGS, env, tmp, *args)


def _divs(dom: str) -> dict[str, str]:
    """The page's top-level plot divs by id (DVC writes one per plot)."""
    parts = re.split(r'<div id="([^"]+)"', dom)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.mark.server
def test_plots_page_renders_offline_with_bars_and_one_line_per_run(tmp_path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("no chromium: `apt-get install -y chromium` (.ci/run installs it)")
    if not (NODE_MODULES / VEGA_LIBS[-1]).is_file():
        pytest.skip(f"no vega in {NODE_MODULES}: `make vega` (.ci/run runs it)")
    repo = tmp_path / "repo"
    repo.mkdir()
    env = os.environ | {
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run_in_group(["git", "init", "-q"], repo, env)
    run_in_group(["dvc", "init", "-q"], repo, env)
    shutil.copytree(ROOT / ".dvc/plots", repo / ".dvc/plots")
    rows, results = _sweep_repo(repo)
    printed = run_in_group(
        [sys.executable, "-m", "pipelines.plots_page", "--node-modules", str(NODE_MODULES), "--out", "plots"], repo, env
    )
    page = repo / "plots/index.html"
    assert f"file://{page}" in printed
    html = page.read_text()
    assert "<script src" not in html and "cdn.jsdelivr" not in html, "the page must load nothing from a network"

    dom = _chromium(env, tmp_path, "--dump-dom", page.as_uri())
    divs = _divs(dom)
    bars = next(v for k, v in divs.items() if "accuracy" in k)
    widths = [float(w) for w in re.findall(r'aria-roledescription="bar"[^>]* d="M[^h]*h([\d.]+)', bars)]
    assert len(widths) == len(rows) and min(widths) > 0, "one visible bar per config"
    runs = sorted({r.spec.name for r in results if r.completed})
    curves = {
        "lm_loss": divs["metrics_sweep_loss_curves_json"],
        "val_step2_nll": next(v for k, v in divs.items() if k.startswith("validation_Step-2_NLL")),
    }
    for key, chart in curves.items():
        assert chart.count('aria-roledescription="line mark"') == len(runs), "one line per run"
        assert all(f">{run}<" in chart for run in runs), "every run in the legend"
        points = sum(h[key] is not None for r in results if r.completed for h in r.history)
        assert chart.count('aria-roledescription="point"') == points, "a point per value, none for null"
    assert all("<img" in divs[f"metrics_sweep_{name}_png"] for name in ("heatmap", "loss_curves", "effects"))

    _chromium(env, tmp_path, f"--screenshot={SCREENSHOT}", page.as_uri())
    assert SCREENSHOT.stat().st_size > 10_000
