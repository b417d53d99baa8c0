"""The DVC plots page, offline: `dvc plots show` with an HTML template that carries vega.

    python -m pipelines.plots_page --node-modules .cache/vega/node_modules --out plots

Writes OUT/index.html (the charts of dvc.yaml's `plots`, with the templates of .dvc/plots/)
and prints its path. Run from the project root; `make plots` installs vega and runs this.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from stepjepa.sweep.plots import offline_page_template


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--node-modules", type=Path, required=True, help="npm folder holding vega, vega-lite, vega-embed")
    p.add_argument("--out", type=Path, default=Path("plots"), help="folder for index.html")
    args = p.parse_args(argv)
    try:
        page = offline_page_template(args.node_modules)
    except FileNotFoundError as err:
        print(f"plots_page: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    template = args.out / "template.html"
    template.write_text(page, encoding="utf-8")
    done = subprocess.run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(args.out)])
    template.unlink()
    if done.returncode == 0:
        print(f"plots page (works offline): file://{(args.out / 'index.html').resolve()}")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
