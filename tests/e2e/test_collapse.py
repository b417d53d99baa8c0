"""Collapse diagnostics on real training (issue 11, acceptance 3): JEPA-only training, which
can satisfy the JEPA loss by mapping every view to one vector, raises the collapse warning;
ordinary Step-JEPA training does not. Also the in-training held-out curves."""

import json

import pytest

from stepjepa.evaluation.heldout import view_embeddings
from stepjepa.method.batching import load_rows
from stepjepa.method.diagnostics import collapse_warnings, view_diagnostics
from stepjepa.prompts import predictor_tokens
from stepjepa.training.train import train
from stepjepa.vocabulary import pad_id
from tests.support.train import make_config, write_tokenized

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def data(tiny_model_dir, conversations, tmp_path_factory):
    folder = tmp_path_factory.mktemp("collapse")
    return (
        write_tokenized(tiny_model_dir, conversations[:96], folder / "train.parquet"),
        write_tokenized(tiny_model_dir, conversations[150:182], folder / "validation.parquet"),
    )


def diagnose(tiny_model_dir, data, tmp_path, **train_options):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    train_path, val_path = data
    cfg = make_config(tiny_model_dir, k=2, max_steps=24, eval_every=8, eval_examples=8, **train_options)
    result = train(cfg, train_path, tmp_path / "run", val_data=val_path)
    model = AutoModelForCausalLM.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    ids = list(tokenizer.convert_tokens_to_ids(predictor_tokens(2)))
    view1, view2 = view_embeddings(
        model, load_rows(val_path), k=2, layout="inline", predictor_ids=ids, pad_id=pad_id(tokenizer)
    )
    history = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    return view_diagnostics(view1, view2), history


def test_jepa_only_training_collapses_and_is_flagged(tiny_model_dir, data, tmp_path):
    diag, history = diagnose(tiny_model_dir, data, tmp_path, gamma=0.0, **{"lambda": 1.0})
    warnings = collapse_warnings(diag, history)
    assert warnings, f"no collapse warning for JEPA-only training: {diag}"
    assert "collapsed" in warnings[0]


def test_healthy_step_jepa_training_is_not_flagged_and_logs_heldout_curves(tiny_model_dir, data, tmp_path):
    diag, history = diagnose(tiny_model_dir, data, tmp_path, **{"lambda": 0.5})
    assert collapse_warnings(diag, history) == [], diag
    curve = [(h["step"], h["val_step2_nll"]) for h in history if "val_step2_nll" in h]
    # 96 rows of batch 8 are one 12-step epoch (max_steps 24 is not reached).
    assert [s for s, _ in curve] == [8, 12], "held-out NLL every eval_every steps and at the end"
    assert curve[-1][1] < curve[0][1], "the held-out Step-2 NLL falls as the model learns"
    assert all("tokens_per_s" not in h for h in history), "timings stay out of the run folder"
