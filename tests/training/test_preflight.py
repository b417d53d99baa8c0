"""`stepjepa.training.preflight`: the model's positions are read from its config.json only
where that is plain; anything else is left to training's own check on the loaded model."""

from __future__ import annotations

import json

import pytest

from stepjepa.config import config_from_dict
from stepjepa.training.preflight import configured_positions


@pytest.mark.parametrize(
    "config, remote_code, expected",
    [
        ({"max_position_embeddings": 512}, False, 512),
        ({"max_position_embeddings": 512}, True, None),  # remote code may compute its own
        ({"n_positions": 512}, False, None),  # GPT-2's name: transformers maps it, not this check
        ({"max_position_embeddings": True}, False, None),
        ([512], False, None),
    ],
)
def test_positions_from_config_json(tmp_path, config, remote_code, expected):
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = config_from_dict({"model": {"name_or_path": str(tmp_path), "trust_remote_code": remote_code}})
    assert configured_positions(cfg) == expected


def test_no_config_json_leaves_it_to_training(tmp_path):
    assert configured_positions(config_from_dict({"model": {"name_or_path": str(tmp_path)}})) is None
