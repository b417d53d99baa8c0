"""The model registry on a real MLflow sqlite store (stepjepa/tracking/registry.py): the
champion's tags take the seed-level verdict, one run is one model version whichever sweep
registers it, and the alias `champion` moves only on evidence or when asked."""

from __future__ import annotations

import dataclasses
import shutil

import pytest

from stepjepa.stats import SELECTION_RULE, VERDICT_RULE
from stepjepa.sweep.report import best_config, compare_on_test, summarize, versus_champion
from stepjepa.tracking import registry
from tests.support.sweep_results import fake_results


@pytest.fixture(scope="module")
def migrated(tmp_path_factory, migrated_mlflow):
    """A migrated store with the experiment, made once for the module's tests."""
    import mlflow

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(migrated_mlflow(db)).create_experiment("registry")
    return db


@pytest.fixture
def store(migrated, tmp_path, monkeypatch):
    import mlflow

    shutil.copy(migrated, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    client = mlflow.MlflowClient(uri)
    client.experiment = client.get_experiment_by_name("registry").experiment_id
    return client


def _run_with_model(store) -> str:
    """A run holding a logged model (no weights: the registry needs only its URI)."""
    run_id = store.create_run(store.experiment).info.run_id
    model = store.create_logged_model(store.experiment, name="model", source_run_id=run_id)
    store.set_tag(run_id, "model_uri", model.model_uri)
    return run_id


def _versions(store) -> list[str]:
    return sorted(v.version for v in store.search_model_versions("name = 'm'"))


def _alias(store, alias: str = "champion") -> str:
    return str(store.get_model_version_by_alias("m", alias).version)


def _register(store, seeds: tuple[int, ...]) -> dict:
    results = fake_results(seeds=seeds)
    best = best_config(summarize(results))
    test = compare_on_test([r for r in results if r.spec.config_name in ("sft", best["config"])], best)
    return registry.register_champion("m", _run_with_model(store), best, test)


def _tags(store, version: str = "1") -> dict[str, str]:
    return store.get_model_version("m", version).tags


def test_two_seeds_are_too_few_for_the_champion_to_beat_sft(store):
    assert _register(store, (0, 1))["outcome"] == "first champion: version 1 (k2_lam0.5)"
    tags = _tags(store)
    assert tags["config"] == "k2_lam0.5" and tags["selected_on"] == "validation"
    assert tags["selected_by"] == SELECTION_RULE and "highest mean validation accuracy" in SELECTION_RULE
    assert tags["vs_sft_verdict"] == "too few seeds to tell" and tags["verdict_rule"] == VERDICT_RULE
    assert tags["beats_sft"] == "no: the selected config's verdict vs SFT on validation is too few seeds to tell"
    assert tags["test_vs_sft_verdict"] == "too few seeds to tell"
    assert tags["registry_outcome"] == "first champion: version 1 (k2_lam0.5)" and _alias(store) == "1"


def test_four_seeds_let_the_champion_beat_sft(store):
    _register(store, (0, 1, 2, 3))
    assert _tags(store)["vs_sft_verdict"] == "better" and _tags(store)["beats_sft"] == "yes"
    assert _tags(store)["test_vs_sft_verdict"] == "better"


def _best(config: str) -> dict:
    return {"config": config, "k": 1, "lambda": 0.5, "accuracy_strict": 0.3}


def test_the_same_run_registered_twice_is_one_version(store):
    run = _run_with_model(store)
    first = registry.register_champion("m", run, _best("sft"))
    again = registry.register_champion("m", run, _best("sft"))
    assert _versions(store) == [1] and first["version"] == again["version"] == "1"
    assert again["outcome"] == "champion unchanged: the sweep's best is the champion itself, version 1 (sft)"


def test_the_same_run_folder_logged_to_another_run_is_one_version(store, tmp_path):
    folder = tmp_path / "sft_s0-abcd1234"
    registry.register_champion("m", _run_with_model(store), _best("sft"), run_dir=folder)
    again = registry.register_champion("m", _run_with_model(store), _best("sft"), run_dir=folder)
    assert _versions(store) == [1] and again["version"] == "1"
    assert registry.champion_registered("m", folder.name) and not registry.champion_registered("m", "other")


def test_a_candidate_not_evaluated_against_the_champion_leaves_the_alias(store):
    registry.register_champion("m", _run_with_model(store), _best("sft"))
    # Reproduces issue 32: a small UI sweep (without SFT's config) took over the champion.
    out = registry.register_champion("m", _run_with_model(store), _best("k1_lam0.5"))
    assert _versions(store) == [1, 2] and _alias(store) == "1" and _alias(store, "candidate") == "2"
    assert not out["moved"] and out["alias"] == "candidate"
    assert out["outcome"].startswith("champion unchanged: its config was not evaluated in this sweep")
    assert _tags(store, "2")["registry_outcome"] == out["outcome"]


def test_a_forced_promotion_moves_the_champion(store):
    registry.register_champion("m", _run_with_model(store), _best("sft"))
    out = registry.register_champion("m", _run_with_model(store), _best("k1_lam0.5"), promote=True)
    assert out["moved"] and _alias(store) == "2"
    assert out["outcome"] == "champion moved from version 1 (sft) to version 2 (k1_lam0.5): forced by sweep.promote"
    assert _tags(store, "1")["replaced_by"].startswith("version 2: champion moved")


def _register_against(store, seeds: tuple[int, ...], same_accuracy: bool = False) -> dict:
    """A champion (config k1_lam0.5), then a sweep that evaluated it beside its best."""
    registry.register_champion("m", _run_with_model(store), _best("k1_lam0.5"))
    results = fake_results(seeds=seeds, same_accuracy=same_accuracy)
    best = best_config(summarize(results))
    versus = versus_champion(results, best["config"], "k1_lam0.5")
    return registry.register_champion("m", _run_with_model(store), best, versus=versus)


def test_a_candidate_that_beats_the_champion_by_the_seed_level_rule_moves_it(store):
    out = _register_against(store, (0, 1, 2, 3))
    assert out["moved"] and _alias(store) == "2"
    assert out["outcome"].startswith("champion moved from version 1 (k1_lam0.5) to version 2 (k2_lam0.5): vs k1_lam0.5")
    assert "seeds 0,1,2,3" in out["outcome"] and ": better (" in out["outcome"]


def test_too_few_seeds_against_the_champion_leave_it(store):
    out = _register_against(store, (0, 1))
    assert not out["moved"] and _alias(store) == "1" and _alias(store, "candidate") == "2"
    assert "too few seeds to tell" in out["outcome"] and out["outcome"].startswith("champion unchanged (version 1")


def test_versus_champion_pairs_seeds_and_holds_the_family_of_the_sweep():
    results = fake_results(seeds=(0, 1, 2, 3))
    versus = versus_champion(results, "k2_lam0.5", "k1_lam0.5")
    assert versus["seeds"] == [0, 1, 2, 3] and versus["questions"] == 300 and versus["family"] == 4
    assert versus["verdict"] == "better" and versus["delta"] > 0.2 and versus["p_holm"] >= versus["p_value"]
    assert versus_champion(results, "k1_lam0.5", "k1_lam0.5") is None  # the champion's own config
    # A champion config whose seeds all failed: nothing to compare on.
    failed = [dataclasses.replace(r, status="failed") if r.spec.config_name == "sft" else r for r in results]
    assert versus_champion(failed, "k2_lam0.5", "sft") is None


def _sweep_registers(store, results, keys: dict[str, str], promote: bool = False) -> dict:
    """What the sweep flow's `_register` does with `results`, each config's runs named by
    `keys[config]` (its seedless config key) and given an MLflow run with a model."""
    from pipelines.sweep import _register
    from stepjepa.config import SweepConfig
    from stepjepa.sweep.report import champion_run

    results = [dataclasses.replace(r, run_id=_run_with_model(store)) for r in results]
    runs = {
        r.spec.name: {
            "spec": r.spec,
            "run_dir": f"runs/{r.spec.name}-{keys[r.spec.config_name]}",
            "config_key": keys[r.spec.config_name],
        }
        for r in results
    }
    best = best_config(summarize(results))
    sweep = SweepConfig(registered_model_name="m", promote=promote)
    return _register(sweep, "parent", results, best, None, champion_run(results, best), runs)


def test_the_sweep_compares_its_best_with_the_champions_config_found_by_its_config_key(store):
    keys = {"sft": "s", "k1_lam0.5": "a", "k1_lam2": "b", "k2_lam0.5": "c", "k2_lam2": "d"}
    # The champion: k1_lam0.5 from a sweep of that config alone.
    first = _sweep_registers(store, [r for r in fake_results(seeds=(0,)) if r.spec.config_name == "k1_lam0.5"], keys)
    assert first["outcome"] == "first champion: version 1 (k1_lam0.5)"
    assert _tags(store)["config_key"] == "a" and _tags(store)["sweep"] == "parent"
    # A sweep without it (other keys: another data or config) cannot move it ...
    other = {name: key + "-other" for name, key in keys.items()}
    out = _sweep_registers(store, fake_results(seeds=(0, 1, 2, 3)), other)
    assert not out["moved"] and "its config was not evaluated in this sweep" in out["outcome"]
    # ... one that trained it on the same seeds and beats it does.
    out = _sweep_registers(store, fake_results(seeds=(0, 1, 2, 3)), keys)
    assert out["moved"] and _alias(store) == out["version"] and "vs k1_lam0.5" in out["outcome"]
