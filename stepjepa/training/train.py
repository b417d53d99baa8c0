"""`stepjepa train`: one Step-JEPA (or plain SFT) fine-tuning run.

    stepjepa train --params params.yaml --data data/tokenized/train.parquet --out runs/NAME \\
        [--set train.k=2 --set train.lambda=0.5] [--resume]
    accelerate launch --config_file configs/accelerate/multi_gpu.yaml -m stepjepa.training.train ...  (GPUs)
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \\
        -m stepjepa.training.train ...   (2 CPU processes; see that file for why the variable is needed)

OUT receives `config.yaml` (the resolved config), `checkpoints/step-N/` every
`train.checkpoint_every` steps, `metrics.jsonl` (one line per logged step),
`summary.json`, and `model/`: the final model (LoRA merged) with its tokenizer, a plain
Hugging Face directory. Metrics, params and the model also go to MLflow unless
`train.tracking` is `none`; when MLflow cannot be reached as the run starts, one warning
says so and the run is recorded in `OUT/mlflow-offline.jsonl` for `stepjepa resend OUT`.
`--resume` continues from the latest valid checkpoint, in the same MLflow run.

One process owns OUT at a time (`OUT/.lock`); a second launcher is refused. SIGTERM or
SIGINT stops the run at the next step boundary after a checkpoint, marks the MLflow run
KILLED and exits 128 + the signal (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from stepjepa import startup
from stepjepa.config import Config, ConfigError, flatten, load_config, resolved_tree
from stepjepa.config import split_params as split_params  # re-exported: tests/e2e import it from here
from stepjepa.inputs import InputError
from stepjepa.runlock import Locked, hold
from stepjepa.training.preflight import check_run_inputs

if TYPE_CHECKING:
    from accelerate import Accelerator

    from stepjepa.training.run import TrainResult

log = logging.getLogger(__name__)


def train(
    cfg: Config,
    data: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    run_name: str | None = None,
    accelerator: Accelerator | None = None,
    val_data: str | Path | None = None,
) -> TrainResult:
    """Train `cfg.model` on the tokenised rows in `data`; write the run to `out`. With
    `val_data` and `train.eval_every`, held-out NLL curves are logged during training.

    Raises `Locked` when another process owns `out`, and `Stopped` (with the signal) when
    SIGTERM/SIGINT ended the run early after a checkpoint.
    """
    # Here, not at the top: the command checks its arguments and config without loading torch.
    from stepjepa.training.run import StopOnSignal, make_accelerator, run_training

    owns_accelerator = accelerator is None
    accelerator = accelerator or make_accelerator(cfg.train)
    out = Path(out)
    owner = hold(out / ".lock", f"run folder {out}") if accelerator.is_main_process else contextlib.nullcontext()
    with owner, StopOnSignal() as stop:
        result = run_training(
            cfg, Path(data), out, resume, run_name, accelerator, stop, Path(val_data) if val_data else None
        )
    if owns_accelerator:  # tear down the process group: without it gloo runs sometimes abort at exit
        accelerator.end_training()
    return result


def set_keys_help(width: int = 100) -> str:
    """The keys `--set` accepts, per section, read off the typed config (not a list kept by hand)."""
    import textwrap

    sections: dict[str, list[str]] = {}
    for key in flatten(resolved_tree(Config())):
        section, _, name = key.partition(".")
        sections.setdefault(section, []).append(name)
    lines = [
        textwrap.fill(", ".join(names), width, initial_indent=f"  {section}: ", subsequent_indent="    ")
        for section, names in sections.items()
    ]
    return (
        "--set accepts SECTION.KEY=VALUE (the value is read as YAML) for these keys; meanings and\n"
        "defaults are in stepjepa/config.py:\n" + "\n".join(lines)
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stepjepa train",
        description=__doc__.split("\n\n")[0],
        epilog=set_keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override params, e.g. --set train.k=2 train.lambda=0.5 (keys listed below)",
    )
    parser.add_argument("--data", required=True, help="tokenised training rows (parquet)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--val-data", help="tokenised validation rows (parquet) for held-out curves (train.eval_every)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--run-name", help="MLflow run name (default: the --out folder's name)")
    parser.add_argument(
        "--evaluate",
        type=Path,
        metavar="DIR",
        help="then evaluate the saved model in this process, as `stepjepa evaluate --out DIR "
        "--params DIR/config.yaml` would (a sweep's validation step, without a second "
        "process start and model load; single-process runs only)",
    )
    parser.add_argument("--evaluate-data", type=Path, metavar="JSONL", help="prepared questions for --evaluate")
    parser.add_argument(
        "--evaluate-heldout",
        type=Path,
        metavar="ROWS.parquet",
        help="tokenised rows of the same split for --evaluate (held-out NLL, view diagnostics)",
    )
    args = parser.parse_args(argv)
    if args.evaluate and not args.evaluate_data:
        parser.error("--evaluate needs --evaluate-data")
    return args


def evaluate_after_training(model_dir: Path, out: Path, data: Path, heldout: Path | None) -> bool:
    """Evaluate the model just saved into `out` with the settings of `out/config.yaml`.
    A failure here is logged, not raised: the model is trained and saved, and the sweep
    evaluates it again in a process of its own, which reports the error in full."""
    from stepjepa.evaluation.eval_examples import load_examples
    from stepjepa.evaluation.evaluate import evaluate_to_folder
    from stepjepa.model.model_source import load_model

    try:
        cfg = load_config(out / "config.yaml")
        examples = load_examples(data, cfg.data.system_prompt, cfg.eval.limit)
        model, tokenizer = load_model(model_dir, cfg, cfg.eval.device)
        log.info("evaluating %s on %d examples of %s", model_dir, len(examples), data)
        evaluate_to_folder(model, tokenizer, examples, cfg, out, heldout=heldout)
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.error(
            "evaluation after training failed (%s: %s); the model is saved in %s", type(err).__name__, err, model_dir
        )
        return False
    return True


def checked_args(argv: list[str]) -> tuple[argparse.Namespace, Config] | None:
    """The arguments and the config they name; None, with the reason logged, when the config
    is bad or `--data`, the model or train.k is refused before loading (`check_run_inputs`).
    Nothing heavy is loaded yet, so `--help` and those mistakes answer at once."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:  # `accelerate launch -m stepjepa.training.train` skips cli.py
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(args.params, args.overrides)
        check_run_inputs(cfg, args.data)
    except (ConfigError, InputError) as err:
        log.error("%s", err)
        return None
    return args, cfg


def run_checked(args: argparse.Namespace, cfg: Config) -> int:
    """Train (and with `--evaluate`, evaluate) as `checked_args` read the command; the exit status."""
    # torch and co. load here, once the command is known good (`checked_args`).
    from stepjepa.training.checkpoint import CheckpointError
    from stepjepa.training.loop import Stopped, TrainingError
    from stepjepa.training.run import make_accelerator

    try:
        accelerator = make_accelerator(cfg.train)
        if not accelerator.is_main_process:
            logging.getLogger().setLevel(logging.WARNING)
        result = train(
            cfg,
            args.data,
            args.out,
            resume=args.resume,
            run_name=args.run_name,
            accelerator=accelerator,
            val_data=args.val_data,
        )
    except (ConfigError, InputError, CheckpointError, Locked) as err:
        log.error("%s", err)
        return 2
    except TrainingError as err:
        log.error("%s", err)
        return 1
    except OSError as err:  # a full disk while saving the model: the path and the reason, no traceback
        log.error("%s: %s", err.filename or args.out, err.strerror or err)
        return 1
    except Stopped as err:
        log.warning(
            "stopped by %s after step %d (checkpoint saved); continue with --resume",
            signal.Signals(err.signum).name if err.signum else "a signal",
            err.step,
        )
        return 128 + (err.signum or signal.SIGTERM)
    # One process only: with several, rank 0 would evaluate while the others wait at exit
    # for a process group it is no longer serving; the sweep evaluates those runs itself.
    if args.evaluate and accelerator.num_processes == 1:
        evaluate_after_training(result.model_dir, args.evaluate, args.evaluate_data, args.evaluate_heldout)
    return 0


def main(argv: list[str] | None = None) -> int:
    if (checked := checked_args(sys.argv[1:] if argv is None else argv)) is None:
        return 2
    # The heavy imports (the run's, and MLflow's where the run is tracked) once the command is
    # known good; then a process that started without the cyclic collector gets it back, with
    # what they made frozen (`stepjepa.startup`).
    startup.resume(("stepjepa.training.run", *(("mlflow",) if checked[1].train.tracking == "mlflow" else ())))
    return run_checked(*checked)


if __name__ == "__main__":
    raise SystemExit(main())
