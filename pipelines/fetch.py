"""DVC stage `fetch`: GSM8K into data/raw (GSM8K_DIR, else the hub).

    python -m pipelines.fetch --params params.yaml --out data/raw --metrics metrics/fetch.json
"""

from pipelines._io import run_stage, stage_args, write_json
from stepjepa.config import load_config
from stepjepa.sources import fetch_gsm8k

def main() -> None:
    args = stage_args(__doc__)
    cfg = load_config(args.params)
    write_json(fetch_gsm8k(cfg.data, args.out), args.metrics)

if __name__ == "__main__":
    raise SystemExit(run_stage("fetch", main))
