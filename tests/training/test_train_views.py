"""Training runs of the user/assistant pair and the stop-gradient target (in process, 3 steps)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from stepjepa.training.train import main, train
from tests.support.train import make_config, write_params, write_tokenized


@pytest.fixture(scope="module")
def train_data(tiny_model_dir, conversations, tmp_path_factory) -> Path:
    return write_tokenized(tiny_model_dir, conversations[:32], tmp_path_factory.mktemp("data") / "train.parquet")


@pytest.mark.parametrize(
    "options",
    [
        {"views": "user_assistant", "layout": "packed", "k": 2, "target_grad": False},
        {"views": "user_assistant", "layout": "two_pass", "k": 1},
        {"views": "steps", "layout": "inline", "k": 1, "target_grad": False},
    ],
)
def test_view_pairs_and_stop_gradient_train(tiny_model_dir, train_data, tmp_path, options):
    result = train(make_config(tiny_model_dir, max_steps=3, **{"lambda": 0.5}, **options), train_data, tmp_path / "r")
    last = result.history[-1]
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert "jepa_loss" in last and last["jepa_pairs"] > 0


def test_inline_user_assistant_is_refused_naming_the_keys(tiny_model_dir, train_data, tmp_path, caplog):
    params = write_params(tmp_path / "params.yaml", tiny_model_dir)
    argv = [
        "--params",
        str(params),
        "--set",
        "train.views=user_assistant",
        "--data",
        str(train_data),
        "--out",
        str(tmp_path / "run"),
    ]
    with caplog.at_level(logging.ERROR):
        assert main(argv) == 2
    assert "train.views=user_assistant needs train.layout packed or two_pass" in caplog.text
    assert not (tmp_path / "run").exists()
