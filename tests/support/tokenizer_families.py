"""Three small fast tokenizers of the families real chat models use, built offline.

Each builder trains a tokenizer with the `tokenizers` library on a synthetic GSM8K-like
corpus (well under a second each) and wraps it as a `PreTrainedTokenizerFast` with a
chat template and an end-of-turn special token:

- `byte_level_bpe`: GPT-2 / Qwen / Llama-3 style (ByteLevel pre-tokenizer with the GPT-2
  regex) and a Llama-3 style template that prints today's date unless `date_string` is
  passed.
- `metaspace_unigram`: SentencePiece style (Metaspace pre-tokenizer, Unigram model) with a
  Gemma style template (`<start_of_turn>` / `<end_of_turn>`, system folded into the user).
- `merged_newline_bpe`: character BPE with no pre-tokenizer, so `"\\n\\n"` merges with its
  neighbours into tokens such as `".\\n\\n"` or `"\\n\\nThe"`; ChatML template (the tiny
  model's).

Builders are cached: call them freely, but never mutate what they return (add tokens, set a
template); copy it first. Characters outside `ALPHABET` are `<unk>` in the two non-byte families.
"""

from __future__ import annotations

import functools
import random
import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from stepjepa.prompts import CHATML_TEMPLATE, DEFAULT_SYSTEM_PROMPT, IM_END, IM_START

# Every character the property tests generate, so character-level models never need <unk>.
ALPHABET = string.ascii_letters + string.digits + string.punctuation + " \n"

LLAMA3_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if date_string is not defined -%}{%- set date_string = strftime_now('%d %b %Y') -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{%- if message['role'] == 'system' -%}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

GEMMA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set system = messages[0]['content'] + '\\n\\n' if messages[0]['role'] == 'system' else '' -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{- '<start_of_turn>' + role + '\\n' + (system if loop.first else '') -}}"
    "{{- message['content'] | trim + '<end_of_turn>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}"
)

_NAMES = ["Janet", "Tom", "The", "She", "He", "Each", "A", "Mark", "Weng", "Betty"]
_WORDS = [
    "has",
    "eggs",
    "sells",
    "for",
    "each",
    "day",
    "dollars",
    "the",
    "total",
    "is",
    "and",
    "buys",
    "more",
    "than",
    "half",
    "of",
    "per",
    "hour",
    "earns",
    "so",
    "she",
    "makes",
]


def gsm8k_like_step(rng: random.Random) -> str:
    """One GSM8K-like step: a short sentence, often with arithmetic, ending in '.' or a digit."""
    words = [rng.choice(_NAMES)] + rng.choices(_WORDS, k=rng.randint(2, 8))
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    tail = rng.choice([f" {a} + {b} = {a + b}.", f" ${a} * {b} = ${a * b}", f" {a}/{b}.", f" {a}."])
    return " ".join(words) + tail


def corpus(n_docs: int = 1500, seed: int = 0) -> list[str]:
    """Synthetic solutions (steps joined by blank lines) plus the template's own texts."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        steps = [gsm8k_like_step(rng) for _ in range(rng.randint(2, 5))]
        docs.append("\n\n".join(steps) + f"\n\nThe final answer is \\boxed{{{rng.randint(1, 999)}}}.")
    header = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024"
    return docs + [DEFAULT_SYSTEM_PROMPT, "system\nuser\nassistant\nmodel\n", header, ALPHABET]


def _wrap(tok: Tokenizer, template: str, **special: str) -> PreTrainedTokenizerFast:
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    wrapped.chat_template = template
    return wrapped


@functools.cache
def byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2 / Llama-3 style byte-level BPE with a Llama-3 template that prints the date."""
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return _wrap(tok, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")


@functools.cache
def metaspace_unigram() -> PreTrainedTokenizerFast:
    """SentencePiece style: Metaspace pre-tokenizer and a Unigram model, Gemma style template."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.UnigramTrainer(
        vocab_size=500,
        special_tokens=specials,
        unk_token="<unk>",
        initial_alphabet=list(ALPHABET),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return _wrap(tok, GEMMA_TEMPLATE, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


@functools.cache
def merged_newline_bpe() -> PreTrainedTokenizerFast:
    """Character BPE with no pre-tokenizer: blank lines merge with neighbouring text."""
    specials = ["<|endoftext|>", IM_START, IM_END]
    tok = Tokenizer(models.BPE())
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=list(ALPHABET), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    return _wrap(tok, CHATML_TEMPLATE, bos_token="<|endoftext|>", eos_token=IM_END)


FAMILIES = {
    "byte_level_bpe": byte_level_bpe,
    "metaspace_unigram": metaspace_unigram,
    "merged_newline_bpe": merged_newline_bpe,
}
