"""The model registry: the sweep's champion registered under an alias and tagged with how
it was chosen, and whether this store already holds it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepjepa.stats import SELECTION_RULE, VERDICT_RULE, beats_sft
from stepjepa.tracking.run import log_model_from_folder
from stepjepa.tracking.store import _client
from stepjepa.vocabulary import SFT


def register_champion(
    name: str,
    run_id: str,
    best: dict[str, Any],
    test: dict[str, Any] | None = None,
    alias: str = "champion",
    run_dir: Path | None = None,
) -> dict[str, Any]:
    """Register the model logged by `run_id` under `name` and point `alias` at it; the version
    is tagged with its config, validation accuracy, the test comparison with the SFT baseline
    and whether the selected config (highest mean validation accuracy) beats SFT by the
    seed-level verdict (`stats.VERDICT_RULE`). A run whose model is not in this store (its
    folder came from the DVC cache) has it logged from `run_dir/model` first."""
    import mlflow

    client = _client()
    model_uri = client.get_run(run_id).data.tags.get("model_uri")
    if not model_uri and run_dir is not None and (run_dir / "model" / "config.json").is_file():
        model_uri = log_model_from_folder(run_id, run_dir / "model")
    if not model_uri:
        raise RuntimeError(f"run {run_id} logged no model (train.log_model is off?); nothing to register")
    version = _current_version(client, name, alias, run_id) or mlflow.register_model(model_uri, name).version
    client.set_registered_model_alias(name, alias, version)
    verdict = "baseline" if best["config"] == SFT else best.get("vs_sft_verdict", "")
    tags = {
        "config": best["config"],
        "views": best.get("views", "steps"),
        "k": best["k"],
        "lambda": best["lambda"],
        "run_id": run_id,
        "run_folder": run_dir.name if run_dir else "",
        "selected_on": "validation",
        "selected_by": SELECTION_RULE,
        "validation_accuracy_strict": best.get("accuracy_strict"),
        "delta_vs_sft": best.get("vs_sft_delta", 0.0),
        "vs_sft_verdict": verdict,
        "verdict_rule": VERDICT_RULE,
        "beats_sft": "yes"
        if beats_sft(best)
        else (
            "no: SFT itself was selected"
            if best["config"] == SFT
            else f"no: the selected config's verdict vs SFT on validation is {verdict}"
        ),
    }
    if test:
        tags |= {f"test_{k}": v for k, v in test.items() if isinstance(v, (int, float, str))}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return {"name": name, "version": str(version), "alias": alias, "uri": f"models:/{name}@{alias}", "run_id": run_id}


def champion_registered(name: str, run_folder: str, alias: str = "champion") -> bool:
    """Whether `name@alias` in this store is the model of `run_folder` (and its run exists)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        version = client.get_model_version_by_alias(name, alias)
        return version.tags.get("run_folder") == run_folder and client.get_run(version.run_id) is not None
    except MlflowException:
        return False


def _current_version(client, name: str, alias: str, run_id: str) -> str | None:
    """The version `alias` points at if it already holds `run_id`'s model: a re-run sweep whose
    configs all came from the cache names the same champion, not a copy of it."""
    from mlflow.exceptions import MlflowException

    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such model or alias yet
        return None
    return current.version if current.tags.get("run_id") == run_id else None
