"""The embedded default model: a byte-level BPE tokenizer trained on GSM8K text and a
tiny, seeded Llama built from a config, saved as an ordinary Hugging Face directory.

Nothing here is special to the pipeline downstream: the directory loads with
`AutoTokenizer` / `AutoModelForCausalLM` exactly like a hub checkpoint, so replacing it
with a real model is a change of `model.name_or_path`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from stepjepa.config import TinyModelConfig
from stepjepa.prompts import BOS_TOKEN, CHATML_TEMPLATE, IM_END, IM_START, PAD_TOKEN

SPECIAL_TOKENS = [BOS_TOKEN, IM_START, IM_END, PAD_TOKEN]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 / Qwen / Llama-3 family) with the ChatML template.

    The end-of-turn token `<|im_end|>` is the EOS so that generation stops at the end of
    the assistant message, and training labels it (docs/step-jepa.md section 2).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        chat_template=CHATML_TEMPLATE,
        model_max_length=1_000_000,
    )


def build_model(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised Llama; `cfg.seed` makes the weights reproducible."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def build_tiny_model(cfg: TinyModelConfig, texts: Iterable[str], out_dir: str | Path) -> Path:
    """Train the tokenizer on `texts`, build the model, save both to `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    model = build_model(cfg, tokenizer)
    tokenizer.save_pretrained(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def model_summary(out_dir: str | Path) -> dict:
    """Small facts about a built model for the stage's metrics file."""
    out_dir = Path(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    model = LlamaForCausalLM.from_pretrained(out_dir)
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": config["vocab_size"],
        "hidden_size": config["hidden_size"],
        "num_hidden_layers": config["num_hidden_layers"],
    }


def tokenizer_corpus(records: Iterable[dict]) -> Iterable[str]:
    """The texts the tiny tokenizer learns from: every message of every conversation, with
    its role name as the chat template writes it (so `system`, `user` are single tokens)."""
    for record in records:
        for message in record["messages"]:
            yield f"{message['role']}\n{message['content']}"
