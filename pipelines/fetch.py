"""DVC stage `fetch`: GSM8K into data/raw (GSM8K_DIR, else the hub).

    python -m pipelines.fetch --params params.yaml --out data/raw --metrics metrics/fetch.json
"""

import argparse
from pathlib import Path

from pipelines._io import write_json
from stepjepa.config import load_config
from stepjepa.sources import fetch_gsm8k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    args = parser.parse_args()
    cfg = load_config(args.params)
    write_json(fetch_gsm8k(cfg.data, args.out), args.metrics)


if __name__ == "__main__":
    main()
