"""The model registry: each sweep registers its best run as a version of the model (one
version per run, whichever sweep asks again), tagged with how it was chosen; the alias
`champion` moves to it only on evidence (`decide`), and the outcome is said in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stepjepa.stats import SELECTION_RULE, VERDICT_RULE, beats_sft
from stepjepa.tracking.run import log_model_from_folder
from stepjepa.tracking.store import _client
from stepjepa.vocabulary import SFT

CHAMPION, CANDIDATE = "champion", "candidate"


def current_champion(name: str, alias: str = CHAMPION) -> dict[str, str] | None:
    """The tags of `name@alias` with its `version`, or None when the model or alias is missing
    (a store that cannot be reached raises: "no champion" would move the alias)."""
    from mlflow.exceptions import MlflowException

    try:
        found = _client().get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no model, no alias
            return None
        raise
    return dict(found.tags) | {"version": str(found.version)}


def decide(
    current: dict[str, str] | None, version: str, config: str, versus: dict | None, promote: bool
) -> tuple[bool, str]:
    """(move the champion alias to `version`?, the outcome in words). It moves when the model
    has no champion, when `promote` (the user's `sweep.promote`) asks, or when the candidate
    config beats the champion's config by the seed-level verdict on the same validation
    questions and seeds of this sweep (`versus`, `report.versus_champion`); never on a
    sweep that did not evaluate the champion's config."""
    if current is None:
        return True, f"first champion: version {version} ({config})"
    was = f"version {current['version']} ({current.get('config', '?')})"
    if current["version"] == version:
        return False, f"champion unchanged: the sweep's best is the champion itself, {was}"
    if promote:
        return True, f"champion moved from {was} to version {version} ({config}): forced by sweep.promote"
    if versus is None:
        if current.get("config") == config:
            return False, (
                f"champion unchanged: the sweep selected the champion's own config, whose {was} stays; "
                f"this run is version {version} (alias {CANDIDATE})"
            )
        return False, (
            f"champion unchanged: its config was not evaluated in this sweep, so {config} (version {version}, "
            f"alias {CANDIDATE}) was not compared with {was} on the same validation questions and seeds; "
            "set sweep.promote to move it anyway"
        )
    evidence = _evidence(versus)
    if versus["verdict"] == "better":
        return True, f"champion moved from {was} to version {version} ({config}): {evidence}"
    return False, f"champion unchanged ({was}): version {version} ({config}, alias {CANDIDATE}) {evidence}"


def _evidence(versus: dict) -> str:
    seeds = ",".join(map(str, versus["seeds"]))
    return (
        f"vs {versus['champion_config']} on the same {versus['questions']} validation questions, seeds {seeds}: "
        f"accuracy delta {versus['delta']:+.3f}, Holm p {versus['p_holm']:.3g} over {versus['family']} "
        f"config(s): {versus['verdict']} ({VERDICT_RULE})"
    )


def register_champion(
    name: str,
    run_id: str,
    best: dict[str, Any],
    test: dict[str, Any] | None = None,
    alias: str = CHAMPION,
    run_dir: Path | None = None,
    *,
    versus: dict | None = None,
    promote: bool = False,
    config_key: str = "",
    sweep: str = "",
) -> dict[str, Any]:
    """Register the model logged by `run_id` under `name` (the version that already holds
    `run_id`'s model, or its run folder's, if any) and point `alias` at it when `decide` says
    so, else alias `candidate`; the version is tagged with its config, validation accuracy,
    the test comparison with SFT, whether the selected config beats SFT by the seed-level
    verdict (`stats.VERDICT_RULE`) and the registry's outcome. A run whose model is not in
    this store (its folder came from the DVC cache) has it logged from `run_dir/model` first.
    Returns {name, version, alias (where it points), uri, run_id, moved, outcome}."""
    import mlflow

    client = _client()
    folder = run_dir.name if run_dir else ""
    version = _existing_version(client, name, run_id, folder)
    if version is None:
        model_uri = client.get_run(run_id).data.tags.get("model_uri")
        if not model_uri and run_dir is not None and (run_dir / "model" / "config.json").is_file():
            model_uri = log_model_from_folder(run_id, run_dir / "model")
        if not model_uri:
            raise RuntimeError(f"run {run_id} logged no model (train.log_model is off?); nothing to register")
        version = str(mlflow.register_model(model_uri, name).version)
    current = current_champion(name, alias)
    moved, outcome = decide(current, version, best["config"], versus, promote)
    given = alias if moved or (current and current["version"] == version) else CANDIDATE
    client.set_registered_model_alias(name, given, version)
    verdict = "baseline" if best["config"] == SFT else best.get("vs_sft_verdict", "")
    tags = {
        "config": best["config"],
        "config_key": config_key,
        "views": best.get("views", "steps"),
        "k": best["k"],
        "lambda": best["lambda"],
        "run_id": run_id,
        "run_folder": folder,
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
        "registry_outcome": outcome,
        "sweep": sweep,
    }
    if test:
        tags |= {f"test_{k}": v for k, v in test.items() if isinstance(v, (int, float, str))}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:5000])
    if moved and current is not None:  # the old champion says who replaced it, and why
        client.set_model_version_tag(name, current["version"], "replaced_by", f"version {version}: {outcome}"[:5000])
    return {
        "name": name,
        "version": version,
        "alias": given,
        "uri": f"models:/{name}@{given}",
        "run_id": run_id,
        "moved": moved,
        "outcome": outcome,
    }


def champion_registered(name: str, run_folder: str, alias: str = CHAMPION) -> bool:
    """Whether this store holds `run_folder`'s model as a version of `name` (and its run
    exists): the champion, or a candidate a sweep registered without moving the champion.
    (`alias` is kept for callers; the champion only moves on evidence, so any version counts.)"""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        found = client.search_model_versions(f"name = '{name}' and tags.run_folder = '{run_folder}'")
        return any(client.get_run(v.run_id) is not None for v in found)
    except MlflowException:
        return False


def _existing_version(client, name: str, run_id: str, run_folder: str) -> str | None:
    """The version that already holds `run_id`'s model, or `run_folder`'s (the same run logged
    to another MLflow run, e.g. from the DVC cache): a sweep that names it again reuses it. A
    store that cannot be reached raises: no version is added because one could not be seen."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not found and run_folder:
        found = client.search_model_versions(f"name = '{name}' and tags.run_folder = '{run_folder}'")
    return str(min(int(v.version) for v in found)) if found else None
