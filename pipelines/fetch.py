"""DVC stage `fetch`: the raw splits into data/raw, by `data.source` (GSM8K or the arith task).

python -m pipelines.fetch --params params.yaml --out data/raw --metrics metrics/fetch.json
"""

from pipelines._io import run_stage, stage_args, write_json
from stepjepa.config import load_config
from stepjepa.data.sources import fetch


def main() -> None:
    args = stage_args(__doc__)
    cfg = load_config(args.params)
    write_json(fetch(cfg.data, args.out), args.metrics)


if __name__ == "__main__":
    raise SystemExit(run_stage("fetch", main))
