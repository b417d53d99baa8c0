"""The champion's registry tags take the seed-level verdict (stepjepa/tracking/registry.py),
checked against a recording stand-in for MLflow's client: no store, no model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from stepjepa.stats import SELECTION_RULE, VERDICT_RULE
from stepjepa.sweep.report import best_config, compare_on_test, summarize
from stepjepa.tracking import registry
from tests.support.sweep_results import fake_results


class RecordingClient:
    def __init__(self):
        self.tags: dict[str, str] = {}

    def get_run(self, run_id):
        return SimpleNamespace(data=SimpleNamespace(tags={"model_uri": f"runs:/{run_id}/model"}))

    def get_model_version_by_alias(self, name, alias):
        from mlflow.exceptions import MlflowException

        raise MlflowException("no such alias")

    def set_registered_model_alias(self, name, alias, version):
        pass

    def set_model_version_tag(self, name, version, key, value):
        self.tags[key] = value


@pytest.fixture
def client(monkeypatch):
    import mlflow

    recording = RecordingClient()
    monkeypatch.setattr(registry, "_client", lambda: recording)
    monkeypatch.setattr(mlflow, "register_model", lambda uri, name: SimpleNamespace(version="1"))
    return recording


def _register(seeds: tuple[int, ...]) -> None:
    results = fake_results(seeds=seeds)
    best = best_config(summarize(results))
    test = compare_on_test([r for r in results if r.spec.config_name in ("sft", best["config"])], best)
    registry.register_champion("m", "run-1", best, test)


def test_two_seeds_are_too_few_for_the_champion_to_beat_sft(client):
    _register((0, 1))
    assert client.tags["config"] == "k2_lam0.5" and client.tags["selected_on"] == "validation"
    assert client.tags["selected_by"] == SELECTION_RULE and "highest mean validation accuracy" in SELECTION_RULE
    assert client.tags["vs_sft_verdict"] == "too few seeds to tell" and client.tags["verdict_rule"] == VERDICT_RULE
    assert client.tags["beats_sft"] == "no: the selected config's verdict vs SFT on validation is too few seeds to tell"
    assert client.tags["test_vs_sft_verdict"] == "too few seeds to tell"


def test_four_seeds_let_the_champion_beat_sft(client):
    _register((0, 1, 2, 3))
    assert client.tags["vs_sft_verdict"] == "better" and client.tags["beats_sft"] == "yes"
    assert client.tags["test_vs_sft_verdict"] == "better"
