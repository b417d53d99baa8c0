"""DVC stage `prepare`: split every train and test record into steps and write messages;
carve the validation split out of the training records (`data.validation_size`).

    python -m pipelines.prepare --params params.yaml --raw data/raw --out data/prepared \
        --metrics metrics/prepare.json
"""

import logging

from pipelines._io import run_stage, stage_args, write_json
from stepjepa.config import load_config
from stepjepa.data.prepare import BadRecordError, prepare_file, split_validation, write_json_lines
from stepjepa.data.sources import SPLITS

log = logging.getLogger("prepare")


def main() -> None:
    args = stage_args(__doc__, "raw")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    cfg = load_config(args.params).data
    on_error = "raise" if cfg.on_bad_record == "error" else "skip"
    metrics = {}
    for split in SPLITS:
        path = args.raw / f"{split}.jsonl"
        records, stats = prepare_file(path, split, cfg, on_error)
        if not records:
            raise BadRecordError(
                f"{path}: no usable records ({stats.read} lines read, "
                f"{sum(stats.skipped.values())} skipped, {stats.dropped_short} dropped as short)"
            )
        metrics[split] = stats.as_dict()
        if split == "train":
            records, validation = split_validation(records, cfg.validation_size)
            write_json_lines(validation, args.out / "validation.jsonl")
            metrics["validation"] = {
                "records": len(validation),
                "carved_from": "train",
                "rule": "the data.validation_size records with the smallest sha256 of their id",
            }
            metrics[split]["training_records"] = len(records)
        write_json_lines(records, args.out / f"{split}.jsonl")
        log.info(
            "%s: read %d, kept %d (%d LM-only), dropped short %d, skipped %d %s",
            split,
            stats.read,
            stats.kept,
            stats.kept_lm_only,
            stats.dropped_short,
            sum(stats.skipped.values()),
            dict(stats.skipped) or "",
        )
        for message in stats.examples:
            log.warning("skipped %s", message)
    write_json(metrics, args.metrics)


if __name__ == "__main__":
    raise SystemExit(run_stage("prepare", main))
