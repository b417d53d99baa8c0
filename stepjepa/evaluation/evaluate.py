"""GSM8K accuracy of a model: `stepjepa evaluate --model DIR|URI [--limit N] [--out DIR]`.

The prompt is the record's system + user messages through the model's own chat template
(the template and system prompt it was trained with), with no predictor tokens; answers
are greedy, batched completions that stop at the end-of-turn token. Writes
`predictions.jsonl` (one record per question, re-scorable with `stepjepa score`),
`metrics.json` and `timing.json` (speed: kept apart, since it differs from machine to
machine while the metrics do not) to `--out`, and logs them to MLflow with `--mlflow` (a
new run) or `--mlflow-run-id` (e.g. the training run). With `--heldout ROWS.parquet` (the
tokenised rows of the same split, the same first `eval.limit`) it also writes `heldout.jsonl`: each example's held-out
NLL (all answer tokens, and Step 2's given Step 1) and adds their means and the JEPA view
diagnostics (mean cosine, effective ranks, the JEPA loss floor) to the metrics.

    stepjepa evaluate --model models/tiny --limit 50 --out outputs/eval
    stepjepa evaluate --model models:/step-jepa-gsm8k@champion --mlflow
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepjepa import startup, tracking
from stepjepa.config import Config, ConfigError, config_from_dict, load_config, parse_override
from stepjepa.evaluation.eval_examples import Example, load_examples
from stepjepa.evaluation.score import score_completion, summarize
from stepjepa.inputs import InputError
from stepjepa.model.model_source import load_model, resolve_model_dir
from stepjepa.progress import Rate

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def _limit(text: str) -> str:
    """`--limit N`, or `--limit all` for the whole split whatever `eval.limit` the params set."""
    if text != "all" and not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of examples or 'all', got {text!r}")
    return "null" if text == "all" else text


# Command-line flags that override the `eval` section of the params file.
EVAL_FLAGS = {"split": str, "limit": _limit, "batch_size": int, "max_new_tokens": int, "device": str}


@dataclass(frozen=True)
class EvalResult:
    """Per-example rows (the lines of predictions.jsonl) and the metrics (metrics.json)."""

    rows: list[dict[str, Any]]
    metrics: dict[str, Any]


def evaluate_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: list[Example], *,
                   batch_size: int, max_new_tokens: int, date_string: str | None = None,
                   progress: bool = False, label: str = "evaluate") -> EvalResult:  # fmt: skip
    """Generate greedy answers for `examples` with an in-memory model and score them.

    `date_string` is the date training pinned in dated chat templates (`tokenize.date_string`).
    Each batch logs `LABEL done/total ... eta=...` (the line a sweep's console shows).

    Metrics: those of `score.summarize` plus `mean_completion_tokens`,
    `hit_max_new_tokens` (completions cut off) and `completions_per_second`.
    """
    from stepjepa.evaluation.generation import chat_prompt_ids, generate_greedy

    prompts = [chat_prompt_ids(tokenizer, e.messages, date_string) for e in examples]
    start, rate = time.perf_counter(), Rate(len(prompts))

    def report(done: int) -> None:
        logger.info(
            "%s %d/%d completions=%.3g/s eta=%s",
            label,
            done,
            len(prompts),
            done / (time.perf_counter() - start),
            rate.eta(done),
        )

    completions = generate_greedy(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        on_batch=report,
    )
    seconds = time.perf_counter() - start
    rows = [
        {
            "id": example.id,
            "question": example.messages[-1]["content"],  # what a reader looks for; `prompt` wraps it
            "prompt": tokenizer.decode(prompt, skip_special_tokens=False),
            "completion": completion.text,
            "answer": example.answer,
            **score_completion(completion.text, example.gold),
            "completion_tokens": completion.num_tokens,
            "stopped": completion.stopped,
        }
        for example, prompt, completion in zip(examples, prompts, completions, strict=True)
    ]
    metrics = summarize(rows) | {
        "mean_completion_tokens": sum(c.num_tokens for c in completions) / len(rows),
        "hit_max_new_tokens": sum(not c.stopped for c in completions),
        "completions_per_second": len(rows) / seconds,
    }
    return EvalResult(rows, metrics)


def write_outputs(out_dir: Path, result: EvalResult) -> tuple[Path, Path]:
    """`predictions.jsonl`, `metrics.json` and `timing.json` in `out_dir` (other files there are left alone)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions, metrics, timing = out_dir / "predictions.jsonl", out_dir / "metrics.json", out_dir / "timing.json"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in result.rows), encoding="utf-8")
    speed = {k: v for k, v in result.metrics.items() if k in TIMING_KEYS}
    quality = {k: v for k, v in result.metrics.items() if k not in TIMING_KEYS}
    metrics.write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    timing.write_text(json.dumps(speed, indent=2) + "\n", encoding="utf-8")
    return predictions, metrics, timing


TIMING_KEYS = ("completions_per_second",)
# A sweep names an evaluation folder `<split>-<settings key[:8]>` (`stepjepa.sweep.specs.eval_folder`):
# its progress lines name the split, `evaluate validation 64/200 ...`, which the sweep's console shows.
SETTING_SUFFIX = re.compile(r"-[0-9a-f]{8}$")


def evaluate_to_folder(
    model,
    tokenizer,
    examples: list[Example],
    cfg: Config,
    out: Path,
    *,
    heldout: Path | None = None,
    progress: bool = False,
) -> tuple[EvalResult, tuple[Path, ...]]:
    """Accuracy on `examples` (and, with `heldout` rows, held-out NLL and view diagnostics)
    written to `out`: what `stepjepa evaluate` does once it has a model, and what a sweep's
    training process does right after training, with the model it just saved."""
    result = evaluate_model(model, tokenizer, examples, batch_size=cfg.eval.batch_size,
                            max_new_tokens=cfg.eval.max_new_tokens, date_string=cfg.tokenize.date_string,
                            progress=progress, label=f"evaluate {SETTING_SUFFIX.sub('', out.name)}")  # fmt: skip
    if heldout is not None:
        result.metrics.update(heldout_evaluation(model, tokenizer, heldout, cfg, out))
    files = write_outputs(out, result)
    logger.info("wrote %s", ", ".join(map(str, files)))
    return result, files


def heldout_evaluation(model, tokenizer, rows_path: Path, cfg: Config, out_dir: Path) -> dict[str, Any]:
    """Held-out NLL per example (`heldout.jsonl`) and the JEPA view diagnostics of the
    model's own K and layout (`cfg.train`): the metrics to add to `metrics.json`."""
    from stepjepa.evaluation.heldout import heldout_nll, view_embeddings
    from stepjepa.method.batching import load_rows
    from stepjepa.method.diagnostics import view_diagnostics
    from stepjepa.prompts import predictor_tokens
    from stepjepa.vocabulary import pad_id

    tc = cfg.train
    # The questions accuracy is measured on (`eval.limit`): every number of a split describes
    # the same examples, and held-out NLL stays cheap next to generation.
    rows = load_rows(rows_path, cfg.eval.limit)
    pad = pad_id(tokenizer)
    per_example = heldout_nll(model, rows, pad_id=pad)
    ids = [str(r) for r in _row_ids(rows_path)][: len(rows)]
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "heldout.jsonl").open("w", encoding="utf-8") as fh:
        for row_id, values in zip(ids, per_example, strict=True):
            fh.write(json.dumps({"id": row_id} | values) + "\n")
    step2 = [v["step2_nll"] for v in per_example if v["step2_nll"] is not None]
    metrics: dict[str, Any] = {
        "nll": sum(v["nll"] for v in per_example) / len(per_example),
        "step2_nll": sum(step2) / len(step2) if step2 else None,
        "heldout_examples": len(per_example),
        "heldout_step2_examples": len(step2),
    }
    predictor_ids = list(tokenizer.convert_tokens_to_ids(predictor_tokens(tc.k)))
    # SFT (no JEPA pass) is measured on the steps pair through the inline layout, which
    # computes the same states a plain causal pass does before Step 2.
    views = tc.views if tc.lambda_ > 0 else "steps"
    layout = tc.layout if tc.lambda_ > 0 else "inline"
    view1, view2 = view_embeddings(
        model, rows, k=tc.k, layout=layout, predictor_ids=predictor_ids, pad_id=pad, views=views
    )
    if len(view1) >= 2:
        metrics |= view_diagnostics(view1, view2, loss_kind=tc.loss, temperature=tc.temperature)
    return metrics


def _row_ids(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["id"])["id"].to_pylist()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stepjepa evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory, MLflow URI or hub id (default: params model.name_or_path)")
    parser.add_argument("--data", type=Path, help="prepared (or raw GSM8K) JSONL (default: data/prepared/SPLIT.jsonl)")
    parser.add_argument(
        "--params", type=Path, help="params file with an `eval` section (default: ./params.yaml if present)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("outputs/eval"), help="where predictions.jsonl and metrics.json go"
    )
    for key, kind in EVAL_FLAGS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, type=kind, help=f"overrides eval.{key}")
    parser.add_argument("--mlflow", action="store_true", help="log to a new MLflow run in --experiment")
    parser.add_argument("--mlflow-run-id", help="log into this existing MLflow run (implies --mlflow)")
    parser.add_argument("--experiment", default="stepjepa-eval", help="MLflow experiment of a new run")
    parser.add_argument("--tracking-uri", help="default: $MLFLOW_TRACKING_URI, else the project's sqlite mlflow.db")
    parser.add_argument(
        "--heldout",
        type=Path,
        metavar="ROWS.parquet",
        help="tokenised rows of the same split: add held-out NLL and JEPA view diagnostics",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _config(args: argparse.Namespace) -> Config:
    """The params file (./params.yaml if present) with command-line values as `eval.*` overrides."""
    overrides = [f"eval.{k}={v}" for k in EVAL_FLAGS if (v := getattr(args, k)) is not None]
    if args.params is None and not Path("params.yaml").is_file():
        tree: dict[str, Any] = {"eval": {}}  # outside a project checkout: defaults
        for text in overrides:
            key, value = parse_override(text)
            tree["eval"][key.removeprefix("eval.")] = value
        return config_from_dict(tree, "command line")
    return load_config(args.params or "params.yaml", overrides)


def _check_run(tracking_uri: str, run_id: str) -> None:
    """Fail before generating, not after, when `--mlflow-run-id` names no run."""
    problem = tracking.run_problem(tracking_uri, run_id)
    if problem:
        raise InputError(f"--mlflow-run-id {run_id}: not a run at {tracking_uri} ({problem})")


def _data_path(args: argparse.Namespace, cfg: Config) -> Path:
    if args.data is not None:
        return args.data
    path = Path("data/prepared") / f"{cfg.eval.split}.jsonl"
    if not path.is_file():
        raise InputError(f"{path}: no such file (run the prepare stage, or pass --data, e.g. a raw GSM8K test.jsonl)")
    return path


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = _parser().parse_args(argv)
    tracking_uri = args.tracking_uri or tracking.tracking_uri()
    try:
        cfg = _config(args)
        data = _data_path(args, cfg)
        examples = load_examples(data, cfg.data.system_prompt, cfg.eval.limit)
        if args.mlflow_run_id:
            _check_run(tracking_uri, args.mlflow_run_id)
        model_dir = resolve_model_dir(
            args.model or cfg.model.name_or_path, tracking_uri, revision=None if args.model else cfg.model.revision
        )
        model, tokenizer = load_model(model_dir, cfg, cfg.eval.device)
    except (InputError, ConfigError) as err:
        print(f"stepjepa evaluate: error: {err}", file=sys.stderr)
        return 2
    # torch and transformers are in, and the model: the cyclic collector back on (`stepjepa.startup`).
    startup.resume(("stepjepa.evaluation.generation", *(("mlflow",) if args.mlflow or args.mlflow_run_id else ())))
    logger.info("evaluating %s on %d examples of %s", model_dir, len(examples), data)
    result, files = evaluate_to_folder(
        model, tokenizer, examples, cfg, args.out, heldout=args.heldout, progress=not args.no_progress
    )
    if args.mlflow or args.mlflow_run_id:
        tags = {"eval.model": str(args.model or cfg.model.name_or_path), "eval.data": str(data)}
        tags |= {f"eval.{key}": str(value) for key, value in cfg.eval.model_dump().items()}
        try:
            run_id = tracking.log_evaluation(result.metrics, result.rows, files, tags, tracking_uri=tracking_uri,
                                             run_id=args.mlflow_run_id, experiment=args.experiment)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - MLflow's, requests' and sqlite's errors alike: an unreachable store
            print(json.dumps(result.metrics))
            print(
                f"stepjepa evaluate: error: could not log to MLflow at {tracking_uri} ({tracking.one_line(err)}); "
                f"the results are in {args.out}",
                file=sys.stderr,
            )
            return 1
        logger.info("logged to MLflow run %s at %s", run_id, tracking_uri)
    print(json.dumps(result.metrics))
    return 0
