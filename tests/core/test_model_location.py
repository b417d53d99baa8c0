"""`stepjepa.model_location`: whether a model is there, told without transformers: a folder,
or a hub id in the HF cache while the hub is off (a fake cache in the hub's own layout)."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import constants

from stepjepa.config import ModelConfig
from stepjepa.model_location import missing_model, model_file, not_loadable

HUB_ID = "org/cached-model"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An HF cache holding `HUB_ID` at revision main (config.json only), with the hub off."""
    cache = tmp_path / "hub"
    repo = cache / "models--org--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text(json.dumps({"max_position_embeddings": 64}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_folder_may_load_and_a_path_that_is_none_is_named(tmp_path):
    assert missing_model(str(tmp_path)) is None
    assert missing_model(str(tmp_path / "no-model")) == "no such folder"
    assert missing_model("./no-model") == "no such folder" and missing_model("../no-model") == "no such folder"
    (tmp_path / "weights.bin").write_bytes(b"")
    assert missing_model(str(tmp_path / "weights.bin")) == "not a folder"


def test_a_hub_id_offline_is_looked_up_in_the_cache(hub_cache):
    assert missing_model(HUB_ID) is None
    assert (
        model_file(HUB_ID, "config.json")
        == hub_cache / "models--org--cached-model" / "snapshots" / ("0" * 40) / "config.json"
    )
    assert missing_model(HUB_ID, revision="1" * 40) is not None  # another revision is not cached
    reason = missing_model("org/other-model")
    assert reason.startswith("no such folder, and not in the HF cache") and str(hub_cache) in reason


def test_a_hub_id_with_the_hub_on_is_left_to_transformers(hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert missing_model("org/other-model") is None
    assert model_file(HUB_ID, "config.json") is None  # the hub's latest may differ from the cached one


def test_not_loadable_is_one_line_naming_the_param(hub_cache, tmp_path):
    err = str(not_loadable(ModelConfig(name_or_path="org/other-model"), missing_model("org/other-model")))
    assert err.startswith("model.name_or_path=org/other-model: cannot load (no such folder, and not in the HF cache")
    assert "HF_HUB_OFFLINE=0" in err and "\n" not in err
    path = str(tmp_path / "no-model")
    assert str(not_loadable(ModelConfig(name_or_path=path), OSError("first\nsecond"))) == (
        f"model.name_or_path={path}: cannot load (first)"
    )
