"""One training run of a checked config: data, model, optimizer, tracker, the steps, the final model.

`stepjepa.training.train` (the `stepjepa train` command and `train()`) parses the arguments,
checks the config and holds the run folder, then calls `run_training`. Everything that
needs torch, transformers, accelerate or MLflow lives here, so the command answers `--help`
and a bad param without loading them.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import set_seed

from stepjepa.config import (
    WEIGHT_NEUTRAL_KEYS,
    Config,
    ConfigError,
    TrainConfig,
    flatten,
    resolved_tree,
    split_params,
    write_config,
)
from stepjepa.method.batching import check_rows, check_vocab, laid_out_length, load_rows, step_plan
from stepjepa.method.collate import Collator, attention_for
from stepjepa.method.positions import check_positions, row_lengths
from stepjepa.model.modeling import build_model, check_attention_device, merged_model, save_model
from stepjepa.tracking import Tracker, dvc_tags, git_tags, make_tracker, recorded_source, source_tags
from stepjepa.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from stepjepa.training.loop import StepModule, Stopped, run_steps
from stepjepa.training.optim import build_optimizer, build_scheduler
from stepjepa.vocabulary import pad_id

log = logging.getLogger(__name__)

# A run's MLflow source (mlflow.source.name): the module `python -m` starts, which
# `stepjepa.tracking.folders` also records for the runs it backfills.
ENTRY_POINT = Path("stepjepa/training/train.py")

# What a resumed run must share with its checkpoint: what trains, not how it is evaluated
# or swept. Within them, the weight-neutral keys may change (`config.WEIGHT_NEUTRAL_KEYS`),
# but not train.experiment: the resumed MLflow run lives in the experiment it started in.
RESUME_SECTIONS = ("model", "tokenize", "train")
RESUMABLE_CHANGES = frozenset(k for k in WEIGHT_NEUTRAL_KEYS if k.split(".")[0] in RESUME_SECTIONS) - {
    "train.experiment"
}


@dataclass
class TrainResult:
    """What a finished run produced (history and run id are filled on the main process)."""

    model_dir: Path
    steps: int
    run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def _checkpoint_to_resume(out: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from; refuses to overwrite a run without `--resume`."""
    if not resume and (list_checkpoints(out) or (out / "model").exists()):
        raise ConfigError(f"--out {out} already holds a run; pass --resume to continue it, or choose another --out")
    latest = latest_checkpoint(out) if resume else None
    if resume and latest is None:
        # The sweep passes --resume to every launch; a fresh run is the usual case, not a fault.
        log.info("no checkpoint in %s yet: starting at step 0", out / "checkpoints")
    return latest


def _check_same_config(saved: dict, cfg: Config, checkpoint: Path) -> None:
    def training_part(tree: dict) -> dict:
        return flatten({name: tree.get(name, {}) for name in RESUME_SECTIONS})

    before, now = training_part(saved), training_part(resolved_tree(cfg))
    changed = sorted(
        k for k in before.keys() | now.keys() if before.get(k) != now.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        diffs = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"--resume from {checkpoint}: the config changed ({diffs}); resume with the same params")


def _start_tracking(
    cfg: Config, data: Path, val_data: Path | None, out: Path, run_id: str | None, run_name: str | None, facts: dict
) -> Tracker:
    tracker = make_tracker(
        cfg.train.tracking, cfg.train.experiment, run_name or out.name, run_id, PartialState().is_main_process, out=out
    )
    # A resumed run already has its params and tags; with tracking off there is nothing to tag.
    if tracker.new_run:
        params, settings = split_params(resolved_tree(cfg))
        tracker.log_params(params | {f"run.{k}": v for k, v in facts.items() if k != "data"})
        model_path = Path(cfg.model.name_or_path)
        # data.hub_dataset is a param whichever source was used; data.origin says which was.
        origin = recorded_source(data)
        tracker.set_tags(
            git_tags()
            | source_tags(ENTRY_POINT)
            | dvc_tags([data, *([model_path] if model_path.exists() else [])])
            | {k: str(v)[:5000] for k, v in settings.items()}
            | {"data.path": str(data.resolve()), "out": str(out.resolve())}
            | ({"data.origin": origin} if origin else {})
        )
        tracker.log_datasets({"training": data} | ({"validation": val_data} if val_data else {}), origin)
    return tracker


def make_accelerator(tc: TrainConfig) -> Accelerator:
    """The run's Accelerator; create it before anything asks `PartialState()`, which would
    otherwise fix the distributed setup without the launcher's CPU flag.

    bf16 is applied by `StepModule` (torch.autocast), not by accelerate's mixed precision:
    accelerate's state is a process-wide singleton that refuses a second run with another
    precision in the same process (tests, an in-process sweep).
    """
    # Unused parameters in a step: predictor rows under LoRA when a batch has no JEPA pair.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=tc.finetune == "lora" and tc.k > 0)
    return Accelerator(kwargs_handlers=[ddp])


def _restore(checkpoint: Path | None, cfg: Config, model, optimizer, scheduler, rank: int) -> dict:
    """The saved state of `checkpoint` (`step`, `run_id`, `log_window`), or step 0 for a new run."""
    if checkpoint is None:
        return {"step": 0, "run_id": None}
    state = load_checkpoint(checkpoint, model=model, optimizer=optimizer, scheduler=scheduler, rank=rank)
    _check_same_config(state["config"], cfg, checkpoint)
    log.info("resuming from %s at step %d", checkpoint, state["step"])
    return state


class StopOnSignal:
    """SIGTERM and SIGINT ask the run to stop at the next step boundary, after a checkpoint
    (the preemption contract: SIGTERM, a grace period, then SIGKILL). A repeated SIGTERM
    (a launcher forwarding it, then its watchdog) changes nothing; a second Ctrl-C raises
    KeyboardInterrupt at once."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # only there can Python set handlers
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            log.warning(
                "%s received: stopping after the current step with a checkpoint (Ctrl-C again stops at once)",
                signal.Signals(signum).name,
            )
        self.signum = self.signum or signum
        signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __exit__(self, *exc) -> None:
        self._restore()

    def requested(self, accelerator: Accelerator) -> bool:
        """Whether any process got a signal: all stop at the same step, or DDP would hang."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum or 0)], device=accelerator.device)
        signum = int(accelerator.reduce(flag, "max").item())
        self.signum = self.signum or signum or None
        return signum > 0


def heldout_probe(model: torch.nn.Module, val_data: Path | None, tc: TrainConfig, pad: int):
    """The in-training held-out NLL on the first `tc.eval_examples` validation rows, or None."""
    if val_data is None or tc.eval_every is None:
        return None
    from stepjepa.evaluation.heldout import heldout_nll

    rows = load_rows(val_data, tc.eval_examples)

    def probe() -> dict[str, float]:
        per_example = heldout_nll(model, rows, pad_id=pad)
        step2 = [v["step2_nll"] for v in per_example if v["step2_nll"] is not None]
        metrics = {"val_nll": sum(v["nll"] for v in per_example) / len(per_example)}
        return metrics | ({"val_step2_nll": sum(step2) / len(step2)} if step2 else {})

    return probe


def run_training(
    cfg: Config,
    data: Path,
    out: Path,
    resume: bool,
    run_name: str | None,
    accelerator: Accelerator,
    stop: StopOnSignal,
    val_data: Path | None,
) -> TrainResult:
    tc = cfg.train
    check_attention_device(cfg.model, accelerator.device)
    checkpoint = _checkpoint_to_resume(out, resume)
    rows = load_rows(data, tc.max_examples)
    counts = check_rows(rows, cfg)  # before loading a model: bad data fails in seconds
    set_seed(tc.seed)
    model, tokenizer, predictor_ids = build_model(cfg.model, tc)
    check_vocab(rows, len(tokenizer), predictor_ids)
    check_positions(*row_lengths(rows), tc.k, getattr(model.config, "max_position_embeddings", None))
    plan = step_plan(
        [laid_out_length(r, tc.k, tc.layout, tc.views) for r in rows],
        batch_size=tc.batch_size,
        grad_accum_steps=tc.grad_accum_steps,
        epochs=tc.epochs,
        max_steps=tc.max_steps,
        seed=tc.seed,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
    collator = Collator(
        k=tc.k,
        layout=tc.layout,
        views=tc.views,
        predictor_ids=predictor_ids,
        pad_id=pad_id(tokenizer),
        attention=attention_for(cfg.model.attn_implementation),
    )
    step_module = accelerator.prepare_model(StepModule.from_config(model, tc))
    optimizer = build_optimizer(model, tc)
    scheduler = build_scheduler(optimizer, tc, len(plan))
    restored = _restore(checkpoint, cfg, model, optimizer, scheduler, accelerator.process_index)
    facts = counts | {"total_steps": len(plan), "num_processes": accelerator.num_processes, "data": str(data)}
    tracker = _start_tracking(cfg, data, val_data, out, restored["run_id"], run_name, facts)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        tracker.log_artifact(write_config(cfg, out / "config.yaml"))

    def save(step: int, log_window: list[dict[str, float]]) -> None:
        # The open logging window travels with the checkpoint, so the first mean logged
        # after a resume still covers `log_every` steps.
        save_checkpoint(
            out,
            step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            state={"run_id": tracker.run_id, "config": resolved_tree(cfg), "log_window": log_window},
            keep=tc.keep_checkpoints,
            rank=accelerator.process_index,
            barrier=accelerator.wait_for_everyone,
        )

    try:
        probe = heldout_probe(model, val_data, tc, pad_id(tokenizer))
        history = run_steps(
            accelerator,
            step_module,
            optimizer,
            scheduler,
            plan,
            rows,
            collator,
            tc,
            start=restored["step"],
            tracker=tracker,
            out=out,
            save=save,
            window=restored.get("log_window", []),
            should_stop=lambda: stop.requested(accelerator),
            probe=probe,
        )
        result = _finish(
            accelerator, step_module, tokenizer, tracker, out, history, steps=len(plan), log_model=tc.log_model
        )
    except BaseException as err:
        if isinstance(err, Stopped):
            err.signum = stop.signum
        tracker.end("KILLED" if isinstance(err, (KeyboardInterrupt, Stopped)) else "FAILED")
        raise
    tracker.end()
    return result


def _finish(
    accelerator: Accelerator,
    step_module: torch.nn.Module,
    tokenizer,
    tracker: Tracker,
    out: Path,
    history: list[dict[str, float]],
    *,
    steps: int,
    log_model: bool,
) -> TrainResult:
    """Save the merged model and tokenizer (main process); log the model to the tracker."""
    accelerator.wait_for_everyone()
    model_dir = out / "model"
    if accelerator.is_main_process:
        model = merged_model(accelerator.unwrap_model(step_module).model)
        save_model(model, tokenizer, model_dir)
        if log_model:
            tracker.log_model(model, tokenizer)
        summary = {"steps": steps, "run_id": tracker.run_id, "final": history[-1] if history else {}}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        log.info("saved the final model to %s", model_dir)
    accelerator.wait_for_everyone()
    return TrainResult(model_dir, steps, tracker.run_id, history)
