"""The embedded default model is an ordinary, reproducible Hugging Face directory."""

import hashlib

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stepjepa.model.tiny_model import build_tiny_model, tokenizer_corpus
from stepjepa.prompts import IM_END
from tests.support.synthetic import TINY_TEST_MODEL


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_loads_with_auto_classes_and_generates(tiny_model_dir, conversations):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert tok.is_fast and tok.eos_token == IM_END and tok.pad_token_id is not None
    prompt = tok.apply_chat_template(conversations[0]["messages"][:2], add_generation_prompt=True, return_tensors="pt")
    ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_chat_template_round_trips_text(tiny_model_dir, conversations):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tok.apply_chat_template(conversations[0]["messages"], tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 3


def test_build_is_reproducible(tmp_path, conversations):
    a = build_tiny_model(TINY_TEST_MODEL, tokenizer_corpus(conversations), tmp_path / "a")
    b = build_tiny_model(TINY_TEST_MODEL, tokenizer_corpus(conversations), tmp_path / "b")
    assert digest(a) == digest(b)


def test_seed_changes_weights_but_not_global_rng(tmp_path, conversations):
    before = torch.random.get_rng_state()
    a = build_tiny_model(TINY_TEST_MODEL, tokenizer_corpus(conversations[:50]), tmp_path / "a")
    assert torch.equal(before, torch.random.get_rng_state())
    other = TINY_TEST_MODEL.model_copy(update={"seed": 1})
    b = build_tiny_model(other, tokenizer_corpus(conversations[:50]), tmp_path / "b")
    assert digest(a)["model.safetensors"] != digest(b)["model.safetensors"]
    assert digest(a)["tokenizer.json"] == digest(b)["tokenizer.json"]
