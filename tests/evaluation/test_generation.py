"""Batched greedy generation (stepjepa/evaluation/generation.py) on the tiny model."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig

from stepjepa.evaluation.generation import (
    Completion,
    _batch_inputs,
    _completion,
    chat_prompt_ids,
    end_of_turn_token,
    generate_greedy,
    left_pad,
    stop_token_ids,
)
from stepjepa.evaluation.kv_cache import PrefixCache, supports_prefix_cache
from stepjepa.prompts import IM_END


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def chatty_model(tiny_model_dir):
    """The tiny model with large random weights: at init it answers every prompt with
    newlines, which would make batch-vs-single equality trivially true."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return model


@pytest.fixture(scope="module")
def prompts(tokenizer, conversations):
    """Chat prompts of different lengths, including a very short one."""
    ids = [chat_prompt_ids(tokenizer, c["messages"][:2]) for c in conversations[:11]]
    ids.append(chat_prompt_ids(tokenizer, [{"role": "user", "content": "2+2?"}]))
    assert len({len(p) for p in ids}) > 4
    return ids


def test_left_pad_matches_the_docstring():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_end_of_turn_and_stop_ids(tokenizer):
    assert end_of_turn_token(tokenizer) == IM_END
    assert stop_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(IM_END)]


def test_chat_prompt_ends_with_the_generation_prompt(tokenizer):
    ids = chat_prompt_ids(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}])
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert "predictor" not in tokenizer.decode(ids)


def test_tokenizer_without_chat_template_is_a_clear_error(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        chat_prompt_ids(tokenizer, [{"role": "user", "content": "Q"}])


def test_completion_is_cut_at_the_first_stop_token(tokenizer):
    stop, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.pad_token_id
    hello = tokenizer("hello", add_special_tokens=False)["input_ids"]
    assert _completion(tokenizer, [*hello, stop, pad, pad], {stop}) == Completion("hello", len(hello) + 1, True)
    assert _completion(tokenizer, hello, {stop}) == Completion("hello", len(hello), False)


def extra_stop_token(model, tokenizer, prompts):
    """A token the chatty model writes in some completions but not others, at varying
    positions, so that rows of one batch stop at different steps."""
    first = generate_greedy(model, tokenizer, prompts, max_new_tokens=24, batch_size=len(prompts))
    counts = Counter(t for c in first for t in set(tokenizer(c.text, add_special_tokens=False)["input_ids"]))
    candidates = [t for t, n in counts.items() if 2 <= n <= len(prompts) - 2]
    assert candidates, "the chatty model should vary its output"
    return candidates[0]


@pytest.fixture(scope="module")
def single(chatty_model, tokenizer, prompts):
    """Batch-size-1 completions with an extra stop token, so some rows stop early."""
    chatty_model.generation_config.eos_token_id = [
        tokenizer.eos_token_id,
        extra_stop_token(chatty_model, tokenizer, prompts),
    ]
    completions = generate_greedy(chatty_model, tokenizer, prompts, max_new_tokens=24, batch_size=1)
    assert 0 < sum(c.stopped for c in completions) < len(prompts), "want rows that stop early and rows that do not"
    assert len({c.text for c in completions}) > len(prompts) // 2
    return completions


@pytest.mark.parametrize("batch_size", [5, 12])
def test_batched_equals_batch_size_one(chatty_model, tokenizer, prompts, single, batch_size):
    batched = generate_greedy(chatty_model, tokenizer, prompts, max_new_tokens=24, batch_size=batch_size)
    assert batched == single


def test_missing_pad_token_falls_back_to_a_stop_id(chatty_model, tiny_model_dir, prompts):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = generate_greedy(chatty_model, tokenizer, prompts[:4], max_new_tokens=8, batch_size=4)
    tokenizer.pad_token = None
    assert generate_greedy(chatty_model, tokenizer, prompts[:4], max_new_tokens=8, batch_size=4) == expected


def test_bad_arguments(chatty_model, tokenizer, prompts):
    with pytest.raises(ValueError, match="batch_size"):
        generate_greedy(chatty_model, tokenizer, prompts, max_new_tokens=8, batch_size=0)
    with pytest.raises(ValueError, match="at least one token"):
        generate_greedy(chatty_model, tokenizer, [[]], max_new_tokens=8, batch_size=1)


def test_model_generation_defaults_do_not_leak_into_greedy(chatty_model, tokenizer, prompts):
    """A checkpoint's repetition penalty must not change greedy evaluation."""
    expected = generate_greedy(chatty_model, tokenizer, prompts[:3], max_new_tokens=16, batch_size=3)
    saved = chatty_model.generation_config.repetition_penalty
    chatty_model.generation_config.repetition_penalty = 50.0
    try:
        assert generate_greedy(chatty_model, tokenizer, prompts[:3], max_new_tokens=16, batch_size=3) == expected
        assert chatty_model.generation_config.repetition_penalty == 50.0  # restored afterwards
    finally:
        chatty_model.generation_config.repetition_penalty = saved


@pytest.mark.parametrize("count", [11, 12], ids=["system-prompt-prefix", "one-token-prefix"])
def test_equals_plain_transformers_generate(chatty_model, tokenizer, prompts, count):
    """The shared-prefix cache, grouped prefill and CPU decoding attention change speed, not
    tokens: each prompt alone through transformers' own `generate` (its cache, SDPA) agrees."""
    prompts = prompts[:count]  # the 12th has no system prompt: only `<|im_start|>` is shared
    stop_ids = stop_token_ids(tokenizer, chatty_model)
    got = generate_greedy(chatty_model, tokenizer, prompts, max_new_tokens=24, batch_size=len(prompts))
    for prompt, completion in zip(prompts, got, strict=True):
        with torch.inference_mode():
            output = chatty_model.generate(
                torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        assert completion == _completion(tokenizer, output[0, len(prompt) :].tolist(), set(stop_ids))


def test_models_without_the_fast_path_still_generate_the_same(tokenizer, prompts):
    """A sliding-window model keeps transformers' cache; batch size still changes nothing."""
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=16,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert not supports_prefix_cache(model)
    single = generate_greedy(model, tokenizer, prompts[:6], max_new_tokens=12, batch_size=1)
    assert generate_greedy(model, tokenizer, prompts[:6], max_new_tokens=12, batch_size=6) == single


@pytest.mark.parametrize("count", [11, 12], ids=["system-prompt-prefix", "one-token-prefix"])
def test_prefilled_batch_gives_every_prompt_its_own_next_token_logits(chatty_model, tokenizer, prompts, count):
    """Logits, not just argmaxes: the cached prefix, the per-group padding and the masked gap
    must leave each row's next-token distribution equal to its prompt's alone."""
    rows = sorted(prompts[:count], key=len, reverse=True)
    prefix = PrefixCache.build(chatty_model, rows)
    input_ids, mask, cache = _batch_inputs(chatty_model, rows, tokenizer.pad_token_id, prefix, max_new_tokens=4)
    assert cache.get_seq_length() == input_ids.shape[1] - 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]
    with torch.inference_mode():
        got = chatty_model(input_ids=input_ids[:, -1:], attention_mask=mask, position_ids=positions, cache=cache)
        for row, logits in zip(rows, got.logits[:, -1], strict=True):
            expected = chatty_model(input_ids=torch.tensor([row])).logits[0, -1]
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_evaluation_prompt_is_the_training_prompt_for_a_dated_template():
    """A Llama-3 template prints today's date unless given one: evaluation must pin the
    date tokenisation pinned, or prompts differ from training and from day to day."""
    from stepjepa.data.tokenization import render_conversation
    from tests.support import tokenizer_families as families

    tok = families.byte_level_bpe()
    messages = [
        {"role": "system", "content": "Solve it."},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "2+3 = 5.\n\nThe answer is \\boxed{5}."},
    ]
    trained = render_conversation(tok, messages, "26 Jul 2024")
    expected = tok(trained.text[: trained.content_start], add_special_tokens=False)["input_ids"]
    assert chat_prompt_ids(tok, messages[:2], date_string="26 Jul 2024") == expected
    assert "Today Date: 26 Jul 2024" in tok.decode(expected)
    assert chat_prompt_ids(tok, messages[:2], date_string="01 Jan 2030") != expected
