"""DVC stage `build_model`: the embedded default model (tokenizer trained on GSM8K train).

    python -m pipelines.build_model --params params.yaml --prepared data/prepared/train.jsonl \
        --out models/tiny --metrics metrics/build_model.json
"""

from pipelines._io import run_stage, stage_args, write_json
from stepjepa import startup
from stepjepa.config import load_config
from stepjepa.inputs import read_records


def main() -> None:
    args = stage_args(__doc__, "prepared")
    cfg = load_config(args.params)
    records = read_records(args.prepared)
    # transformers and torch load only now: bad params or records fail without waiting for them.
    from stepjepa.model.tiny_model import build_tiny_model, model_summary, tokenizer_corpus

    startup.resume()  # they are in: the cyclic collector back on (stepjepa/startup.py)
    build_tiny_model(cfg.tiny_model, tokenizer_corpus(records), args.out)
    write_json(model_summary(args.out), args.metrics)


if __name__ == "__main__":
    raise SystemExit(run_stage("build_model", main))
