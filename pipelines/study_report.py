"""`make study`'s page: docs/results/study.md from what the study's DVC experiment produced.

    python -m pipelines.study_report --results outputs/study --out docs/results/study.md --name NAME

RESULTS holds the experiment's params.yaml and its metrics/sweep files (table.md,
summary.json, verdicts.json, effects.png, heatmap.png, loss_curves.png). The page gets the
table (with the per-factor one), the figures (copied beside it, into docs/results/study/)
and how to check a rerun. The reference a rerun is compared with (summary.json and
verdicts.json in docs/results/study/) is not written here: committing a run as the
reference is a decision, made by copying them there.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

FIGURES = (
    ("effects.png", "seed-level effects: each factor's levels against the base config and against SFT"),
    ("heatmap.png", "validation accuracy and Step-2 NLL per K and lambda (configs at the base values)"),
    ("loss_curves.png", "training LM loss and in-training validation Step-2 NLL per run"),
)


def render(params: dict, summary: dict, table: str, name: str, figures: str) -> str:
    """The page's markdown; `figures` is the figures' folder relative to the page."""
    sweep = params.get("sweep", {})
    axes = "; ".join(f"{key}: {', '.join(map(str, values))}" for key, values in sweep.get("axes", {}).items())
    lines = [
        "# Step-JEPA on the arith task: the `make study` ablation",
        "",
        f"- **Run**: experiment `{name}`, page written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"- **Design**: {sweep.get('design', 'grid')}; K in {sweep.get('ks')}, lambda in {sweep.get('lambdas')}, "
        f"view pairs {sweep.get('views', ['steps'])}; {axes or 'no axes'}; the first value of each is the base. "
        f"Seeds {sweep.get('seeds')}: {summary.get('configs')} configs, {summary.get('failed_runs', 0)} failed run(s).",
        f"- **Task and sizes**: the Makefile's `STUDY_*` and `DEMO_*` variables "
        f"({params.get('train', {}).get('max_steps')} steps of batch {params.get('train', {}).get('batch_size')}).",
        f"- **Selected on validation**: {summary.get('selected')} (verdict against SFT: {summary.get('verdict')}).",
        "- **Check a rerun**: `make study` ends with `stepjepa compare outputs/study docs/results/study`, which "
        "says per comparison whether it reproduced (same verdict, overlapping seed-level intervals).",
        "",
        "## The tables (`metrics/sweep/table.md` of the experiment)",
        "",
        table.strip(),
        "",
    ]
    lines += [f"![{text}]({figures}/{file})\n" for file, text in FIGURES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, required=True, help="the study's files, e.g. outputs/study")
    parser.add_argument("--out", type=Path, required=True, help="the page, e.g. docs/results/study.md")
    parser.add_argument("--name", required=True, help="the DVC experiment's name")
    args = parser.parse_args(argv)
    try:
        params = yaml.safe_load((args.results / "params.yaml").read_text(encoding="utf-8")) or {}
        summary = json.loads((args.results / "summary.json").read_text(encoding="utf-8"))
        table = (args.results / "table.md").read_text(encoding="utf-8")
        folder = args.out.with_suffix("")
        folder.mkdir(parents=True, exist_ok=True)
        for file, _ in FIGURES:
            if (args.results / file).is_file():
                shutil.copyfile(args.results / file, folder / file)
        args.out.write_text(render(params, summary, table, args.name, folder.name), encoding="utf-8")
    except (OSError, ValueError, yaml.YAMLError) as err:
        print(f"study_report: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and its figures in {folder}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
