"""Model loading, predictor tokens, LoRA with trainable predictor rows, and the saved model."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stepjepa.config import ModelConfig, TrainConfig
from stepjepa.model.modeling import (
    add_predictor_tokens,
    build_model,
    load_model,
    load_tokenizer,
    merged_model,
    save_model,
)
from stepjepa.prompts import predictor_tokens
from stepjepa.vocabulary import pad_id


def _loaded(model_dir):
    cfg = ModelConfig(name_or_path=str(model_dir))
    return load_model(cfg), load_tokenizer(cfg)


def test_predictor_tokens_are_special_and_start_at_the_mean_embedding(tiny_model_dir):
    model, tok = _loaded(tiny_model_dir)
    old = model.get_input_embeddings().weight.detach().clone()
    ids = add_predictor_tokens(model, tok, 3)
    assert ids == tok.convert_tokens_to_ids(predictor_tokens(3)) == list(range(len(old), len(old) + 3))
    # Special: never split, and listed as added tokens.
    assert tok("x<|predictor_2|>y", add_special_tokens=False)["input_ids"].count(ids[1]) == 1
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == len(tok)
    assert torch.equal(weight[: len(old)], old)
    assert torch.allclose(weight[ids], old.mean(0).expand(3, -1))


def test_adding_tokens_again_reuses_them_and_never_shrinks(tiny_model_dir):
    model, tok = _loaded(tiny_model_dir)
    first = add_predictor_tokens(model, tok, 2)
    rows = model.get_input_embeddings().weight.shape[0]
    assert add_predictor_tokens(model, tok, 2) == first
    assert add_predictor_tokens(model, tok, 0) == []
    model.resize_token_embeddings(rows + 64)  # a model whose vocab is padded beyond the tokenizer
    add_predictor_tokens(model, tok, 2)
    assert model.get_input_embeddings().weight.shape[0] == rows + 64


def test_predictor_rows_in_a_padded_vocabulary_start_at_the_mean_too(tiny_model_dir):
    """Qwen-style: the embedding has spare rows beyond the tokenizer, so adding tokens
    resizes nothing; the predictor rows must still start at the mean of the real tokens,
    not at whatever the spare rows held."""
    model, tok = _loaded(tiny_model_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone() * 2)
    real = len(tok)
    model.resize_token_embeddings(real + 64, mean_resizing=False)
    with torch.no_grad():
        for weight in (model.get_input_embeddings().weight, model.lm_head.weight):
            weight[real:] = 100.0  # spare rows: far from any real token
    inputs, outputs = (w.detach().clone() for w in (model.get_input_embeddings().weight, model.lm_head.weight))
    ids = add_predictor_tokens(model, tok, 2)
    assert ids == [real, real + 1] and model.get_input_embeddings().weight.shape[0] == real + 64
    assert torch.allclose(model.get_input_embeddings().weight[ids], inputs[:real].mean(0).expand(2, -1))
    assert torch.allclose(model.lm_head.weight[ids], outputs[:real].mean(0).expand(2, -1))
    assert torch.equal(model.get_input_embeddings().weight[real + 2 :], inputs[real + 2 :])  # other spares untouched
    assert torch.equal(model.get_input_embeddings().weight[:real], inputs[:real])
    # Tokens already there (a model saved by this pipeline) keep their trained rows.
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] = 7.0
    assert add_predictor_tokens(model, tok, 2) == ids
    assert bool((model.get_input_embeddings().weight[ids] == 7.0).all())


def test_pad_id_falls_back_to_eos(tiny_model_dir):
    _, tok = _loaded(tiny_model_dir)
    assert pad_id(tok) == tok.pad_token_id
    tok.pad_token = None
    assert pad_id(tok) == tok.eos_token_id


def test_lora_trains_adapters_and_predictor_rows_only(tiny_model_dir):
    model, tok, ids = build_model(
        ModelConfig(name_or_path=str(tiny_model_dir)), TrainConfig(finetune="lora", k=2, lora_r=4)
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "trainable_tokens" in n for n in trainable)
    assert any("trainable_tokens" in n for n in trainable), "predictor embeddings must train under LoRA"
    before = model.get_input_embeddings()(torch.tensor([ids + [5]])).detach().clone()
    x = torch.tensor([[5, 6, ids[0], ids[1], 7, 8]])
    model(input_ids=x, labels=x).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    after = model.get_input_embeddings()(torch.tensor([ids + [5]])).detach()
    assert not torch.allclose(after[0, :2], before[0, :2]), "predictor rows did not move"
    assert torch.equal(after[0, 2], before[0, 2]), "a frozen vocabulary row moved"


def test_saved_model_is_plain_transformers_and_matches(tiny_model_dir, tmp_path):
    model, tok, ids = build_model(
        ModelConfig(name_or_path=str(tiny_model_dir)), TrainConfig(finetune="lora", k=2, lora_r=4)
    )
    with torch.no_grad():  # make the adapters and predictor rows non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.tensor([[5, 6, ids[0], ids[1], 7, 8]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=x).logits
    save_model(merged_model(model), tok, tmp_path / "model")
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert not (tmp_path / "model" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert loaded_tok.convert_tokens_to_ids(predictor_tokens(2)) == ids
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=x).logits, expected, atol=1e-4)
    prompt = loaded_tok.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    generated = loaded.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


def test_activation_checkpointing_gives_the_same_gradients(tiny_model_dir):
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, _, ids = build_model(
            ModelConfig(name_or_path=str(tiny_model_dir)),
            TrainConfig(finetune="lora", k=1, lora_r=4, activation_checkpointing=checkpointing),
        )
        assert model.get_base_model().is_activation_checkpointing == checkpointing
        model.train()
        x = torch.tensor([[5, 6, ids[0], 7, 8]])
        model(input_ids=x, labels=x, use_cache=False).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name
