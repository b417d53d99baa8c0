"""An optimizer step's loss is token- and pair-weighted over all its micro-batches and
processes (stepjepa/training/loop.py, docs/loss-normalisation.md): batch 8, batch 4 x accumulation 2
and 2 processes x batch 4 train the same weights when micro-batches hold very different
numbers of label tokens and JEPA pairs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from stepjepa.method.collate import collate, count_targets, shift_targets
from stepjepa.method.forward import step_jepa_forward
from tests.support.loss_steps import K, config, run, step_rows
from tests.support.projects import ROOT
from tests.support.tiny_llama import PRED, tiny_llama

WHOLE = [list(range(8))]
HALVES = [[0, 1, 2, 3], [4, 5, 6, 7]]


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize(
    "options", [{}, {"layout": "two_pass", "loss": "l2"}, {"layout": "packed", "loss": "mse"}, {"lm_loss_chunk": 16}]
)
def test_accumulation_trains_what_one_big_batch_trains(options):
    tc = config(**options)
    whole, whole_metrics = run(WHOLE, tc)
    halves, halves_metrics = run(HALVES, tc)
    assert max_diff(whole, halves) <= 1e-5
    assert max_diff(whole, tiny_llama("sdpa").state_dict()) > 1e-2, "the steps moved the weights"
    for a, b in zip(whole_metrics, halves_metrics):
        for key in ("loss", "lm_loss", "jepa_loss", "mean_cos", "jepa_pairs"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


def test_logged_losses_are_the_steps_token_and_pair_weighted_means():
    tc = config()
    _, metrics = run(HALVES, tc, lr=1e-12)  # (almost) no update: step 1's model is the initial one
    rows = step_rows(1)
    batch = collate(rows, k=K, layout="inline", predictor_ids=PRED[:K], pad_id=0)
    whole = step_jepa_forward(tiny_llama("sdpa"), batch, layout="inline", lam=0.5)
    assert whole.n_tokens == count_targets(rows) == int((shift_targets(batch["lm_labels"]) != -100).sum())
    assert metrics[0]["lm_loss"] == pytest.approx(float(whole.lm_loss), rel=1e-6)
    assert metrics[0]["jepa_loss"] == pytest.approx(float(whole.jepa_loss), rel=1e-5)
    assert metrics[0]["loss"] == pytest.approx(float(whole.loss.detach()), rel=1e-6)
    assert metrics[0]["jepa_pairs"] == whole.n_valid == 7


def test_a_step_without_the_jepa_draw_has_no_jepa_term_on_any_micro_batch():
    tc = config(jepa_ratio=1e-9)  # no step draws JEPA
    weights, metrics = run(HALVES, tc)
    sft, sft_metrics = run(WHOLE, config(**{"lambda": 0.0}))
    assert max_diff(weights, sft) <= 1e-5
    assert all("jepa_loss" not in m and m["jepa_pairs"] == 0 for m in metrics)
    assert [m["lm_loss"] for m in metrics] == pytest.approx([m["lm_loss"] for m in sft_metrics], rel=1e-5)


@pytest.mark.cli
@pytest.mark.timeout(300)
def test_two_processes_train_what_one_big_batch_trains(tmp_path):
    env = dict(os.environ, ACCELERATE_USE_CPU="true", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
        "-m",
        "tests.support.loss_steps",
        str(tmp_path),
    ]
    # Its own process group, killed whole on a time-out: the launcher's workers die with the test.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, output
    ddp = torch.load(tmp_path / "weights.pt")
    ddp_metrics = json.loads((tmp_path / "metrics.json").read_text())
    whole, whole_metrics = run(WHOLE, config(lm_loss_chunk=None))  # the processes score in chunks of 16
    assert max_diff(whole, ddp) <= 1e-5
    for a, b in zip(whole_metrics, ddp_metrics):
        for key in ("loss", "lm_loss", "jepa_loss", "mean_cos", "jepa_pairs"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
