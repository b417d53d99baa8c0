"""Checkpoints: round trip, keep-last-N, half-written saves ignored, resume is exact."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from stepjepa.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from stepjepa.training.train import train
from tests.support.train import make_config, write_tokenized


def _toy():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)  # frozen: not saved, not restored
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    return model, optimizer, scheduler


def test_round_trip_restores_parameters_optimizer_scheduler_and_rng(tmp_path):
    model, optimizer, scheduler = _toy()
    path = save_checkpoint(
        tmp_path, 7, model=model, optimizer=optimizer, scheduler=scheduler, state={"run_id": "abc"}, keep=2
    )
    expected_draw = (random.random(), torch.rand(1), np.random.random(), np.random.standard_normal())
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    fresh, fresh_opt, fresh_sched = _toy()
    state = load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert state == {"step": 7, "run_id": "abc"}
    assert torch.equal(fresh[1].weight, saved["1.weight"]) and torch.equal(fresh[0].bias, saved["0.bias"])
    assert not torch.equal(fresh[0].weight, saved["0.weight"]), "frozen weights are not part of a checkpoint"
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert (random.random(), torch.rand(1), np.random.random(), np.random.standard_normal()) == expected_draw


def test_checkpoint_files_load_without_unpickling_code(tmp_path):
    """Checkpoints may come from a shared cache or DVC remote: every .pt file must load
    with `weights_only=True`, which refuses anything but tensors and plain containers."""
    model, optimizer, scheduler = _toy()
    np.random.standard_normal()  # a cached Gaussian is part of NumPy's state too
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=1)
    files = sorted(path.glob("*.pt"))
    assert [f.name for f in files] == ["optimizer.pt", "rng-0.pt", "scheduler.pt"]
    for file in files:
        torch.load(file, weights_only=True)


def test_keeps_the_last_n_and_ignores_half_written_ones(tmp_path):
    model, optimizer, scheduler = _toy()
    for step in (2, 4, 6, 8):
        save_checkpoint(tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000006", "step-000008"]
    # A run killed mid-save leaves a temporary folder, or a folder without state.json.
    (tmp_path / "checkpoints" / ".tmp-step-000010").mkdir()
    (tmp_path / "checkpoints" / "step-000012").mkdir()
    assert latest_checkpoint(tmp_path).name == "step-000008"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_loading_into_a_model_with_other_trainable_parameters_fails(tmp_path):
    model, optimizer, scheduler = _toy()
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=scheduler, state={}, keep=1)
    other, other_opt, other_sched = _toy()
    other[0].weight.requires_grad_(True)
    with pytest.raises(ValueError, match="trainable parameters differ"):
        load_checkpoint(path, model=other, optimizer=other_opt, scheduler=other_sched)


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_model_dir, conversations, tmp_path, monkeypatch):
    """Crash after step 5 (checkpoint at 4), resume: same steps, bit-identical weights."""
    data = write_tokenized(tiny_model_dir, conversations[:64], tmp_path / "train.parquet")
    cfg = make_config(
        tiny_model_dir,
        k=2,
        **{"lambda": 0.5},
        max_steps=8,
        checkpoint_every=2,
        batch_size=8,
        finetune="lora",
        lora_r=4,
        jepa_ratio=0.5,
    )
    reference = train(cfg, data, tmp_path / "reference")

    import stepjepa.training.loop as loop

    real_step = loop.optimizer_step

    def crash_at_step_5(*args, **kwargs):
        if args[-1] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "optimizer_step", crash_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, tmp_path / "crashed")
    assert latest_checkpoint(tmp_path / "crashed").name == "step-000004"
    monkeypatch.setattr(loop, "optimizer_step", real_step)
    resumed = train(cfg, data, tmp_path / "crashed", resume=True)
    assert resumed.steps == reference.steps == 8
    assert [m["step"] for m in resumed.history] == [m["step"] for m in reference.history] == [2, 4, 6, 8]
    timeless = [{k: v for k, v in m.items() if k != "tokens_per_s"} for m in resumed.history + reference.history]
    assert timeless[:4] == timeless[4:]
    expected, got = _weights(reference.model_dir), _weights(resumed.model_dir)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    lines = (tmp_path / "crashed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4, 6, 8]


def test_an_existing_run_is_not_overwritten_without_resume(tiny_model_dir, conversations, tmp_path):
    from stepjepa.config import ConfigError

    data = write_tokenized(tiny_model_dir, conversations[:16], tmp_path / "train.parquet")
    cfg = make_config(tiny_model_dir, max_steps=2, checkpoint_every=1)
    train(cfg, data, tmp_path / "run")
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, data, tmp_path / "run")
    changed = make_config(tiny_model_dir, max_steps=2, checkpoint_every=1, learning_rate=0.1)
    with pytest.raises(ConfigError, match="train.learning_rate"):
        train(changed, data, tmp_path / "run", resume=True)
