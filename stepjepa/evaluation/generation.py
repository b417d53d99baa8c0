"""Batched greedy generation for chat prompts: left padding, KV cache, stop at end of turn.

`generate_greedy` gives the same completions whatever the batch size (tested), so a
batch size is a speed setting, never a result setting. Prompts are sorted by length
before batching, which keeps padding small and puts the longest (largest-memory) batch
first, then the completions are returned in the input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache

from stepjepa.evaluation.decode_attention import cpu_decode_attention
from stepjepa.evaluation.kv_cache import PrefixCache, supports_prefix_cache
from stepjepa.vocabulary import pad_id

# Rows prefilled per forward pass when prompts share a cached prefix (see `_batch_inputs`).
PREFILL_ROWS = 8


@dataclass(frozen=True)
class Completion:
    """One generated answer."""

    text: str
    """Decoded tokens up to (not including) the first stop token."""
    num_tokens: int
    """Generated tokens, the stop token included."""
    stopped: bool
    """True if a stop token ended it; False if it ran into `max_new_tokens`."""


def chat_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], date_string: str | None = None
) -> list[int]:
    """Token ids of `messages` through the chat template with the generation prompt on.

    Rendered as text, then tokenised without extra special tokens: the template already
    writes them (as `apply_chat_template(tokenize=True)` does), so no BOS is doubled.
    `date_string` pins templates that print today's date (Llama-3), as tokenisation does
    (`tokenize.date_string`): otherwise the prompt differs from training and from one day
    to the next.
    """
    if not tokenizer.chat_template:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; evaluation must use the "
            "template the model was trained with (save it with the tokenizer, e.g. "
            "stepjepa.prompts.CHATML_TEMPLATE for the tiny model)"
        )
    # Only when given: a template that tests `date_string is defined` must not see None.
    pinned = {} if date_string is None else {"date_string": date_string}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **pinned)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def end_of_turn_token(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The special token the chat template closes an assistant turn with, if any.

    Found by rendering a turn with a sentinel and reading the token after it, so ChatML
    (`<|im_end|>`), Llama-3 (`<|eot_id|>`) and Gemma (`<end_of_turn>`) need no name list.
    """
    sentinel = "STEPJEPA_SENTINEL_7f3a"
    turn = [{"role": "user", "content": "1"}, {"role": "assistant", "content": sentinel}]
    try:
        text = tokenizer.apply_chat_template(turn, tokenize=False)
    except Exception:  # templates may reject this minimal conversation; then only EOS stops
        return None
    tail = text.rsplit(sentinel, 1)[-1].lstrip()
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    if not ids:
        return None
    token = tokenizer.convert_ids_to_tokens(ids[0])
    special = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
    return token if token in special else None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None = None) -> list[int]:
    """Ids that end a completion: tokenizer EOS, the model's generation EOS ids, end of turn."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    configured = model.generation_config.eos_token_id if model is not None else None
    ids.extend([configured] if isinstance(configured, int) else configured or [])
    turn_end = end_of_turn_token(tokenizer)
    if turn_end is not None:
        ids.append(tokenizer.convert_tokens_to_ids(turn_end))
    if not ids:
        raise ValueError("the tokenizer has no EOS token and its chat template no end-of-turn token")
    return sorted(set(ids))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad id lists: `input_ids` and `attention_mask`, both (B, max_len).

    [[5, 6, 7], [8]] with pad 0 -> ids [[5, 6, 7], [0, 0, 8]], mask [[1, 1, 1], [0, 0, 1]].
    Left, so that every row's next token is generated at the same last position.
    """
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            input_ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, width - len(seq) :] = 1
    return input_ids, attention_mask


def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
    progress: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> list[Completion]:
    """Greedy completions of tokenised prompts, in the order given.

    `prompts` are id lists (see `chat_prompt_ids`); batches of `batch_size` are
    left-padded and decoded with the KV cache until every row has produced a stop token
    (`stop_token_ids`) or `max_new_tokens` tokens. `on_batch` is told how many prompts
    are done after each batch.
    """
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    stop_ids, pad = stop_token_ids(tokenizer, model), pad_id(tokenizer)
    config = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new_tokens, use_cache=True,
        eos_token_id=stop_ids, pad_token_id=pad,
    )  # fmt: skip
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: dict[int, Completion] = {}
    model.eval()
    with (
        torch.inference_mode(),
        _without_model_generation_defaults(model),
        cpu_decode_attention(model),
        tqdm(total=len(prompts), unit="completion", disable=not progress) as bar,
    ):
        prefix = PrefixCache.build(model, prompts) if supports_prefix_cache(model) else None
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask, cache = _batch_inputs(
                model, [prompts[i] for i in chunk], pad, prefix, max_new_tokens
            )
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                generation_config=config,
                **({"cache": cache} if cache is not None else {}),
            )
            new_tokens = output[:, input_ids.shape[1] :].tolist()
            for index, tokens in zip(chunk, new_tokens, strict=True):
                results[index] = _completion(tokenizer, tokens, set(stop_ids))
            bar.update(len(chunk))
            if on_batch is not None:
                on_batch(len(results))
    return [results[i] for i in range(len(prompts))]


def _batch_inputs(
    model: PreTrainedModel, rows: list[Sequence[int]], pad_id: int, prefix: PrefixCache | None, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, Cache | None]:
    """`input_ids`, `attention_mask` and, with a shared prefix, a cache already prefilled.

    Without a prefix: left-padded rows, and `generate` prefills them itself. With one, the
    rows are `[prefix][suffix but its last token][gap][last token]`, the cache holds all
    but the last column, and `generate` starts from the last tokens. The suffixes are
    prefilled in groups of `PREFILL_ROWS` rows of similar length (the rows come sorted by
    length), each padded only to its group's longest: one batch padded to its longest
    prompt spent half its prefill on padding. The gap between a group's width and the
    batch's is masked.
    """
    if prefix is None:
        return *left_pad(rows, pad_id), None
    shared, batch = len(prefix.ids), len(rows)
    suffixes = [row[shared:] for row in rows]
    width = shared + max(len(s) for s in suffixes)
    cache = prefix.for_batch(batch, capacity=width + max_new_tokens)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    input_ids[:, :shared] = torch.tensor(prefix.ids)
    input_ids[:, -1] = torch.tensor([s[-1] for s in suffixes])
    attention_mask[:, :shared] = attention_mask[:, -1] = 1
    for start in range(0, batch, PREFILL_ROWS):
        stop = min(start + PREFILL_ROWS, batch)
        body_ids, body_mask = left_pad([s[:-1] for s in suffixes[start:stop]], pad_id)
        if body_ids.shape[1] == 0:
            continue
        end = shared + body_ids.shape[1]
        input_ids[start:stop, shared:end] = body_ids
        attention_mask[start:stop, shared:end] = body_mask
        group_mask = attention_mask[start:stop, :end]
        # Positions count unmasked tokens, as `generate` numbers them.
        positions = (group_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        model(
            input_ids=body_ids.to(model.device),
            attention_mask=group_mask.to(model.device),
            position_ids=positions.to(model.device),
            cache=Cache(layers=[layer.rows(start, stop) for layer in cache.layers]),
            use_cache=True,
            logits_to_keep=1,
        )
    for layer in cache.layers:
        layer.set_length(width - 1)
    return input_ids, attention_mask, cache


@contextmanager
def _without_model_generation_defaults(model: PreTrainedModel) -> Iterator[None]:
    """Hide `model.generation_config` while generating.

    transformers fills every field left unset in the config passed to `generate` from the
    model's own generation config, so a checkpoint's `repetition_penalty` (Qwen2.5
    instruct ships 1.05-1.1) or `no_repeat_ngram_size` would silently turn greedy
    decoding into something else.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved


def _completion(tokenizer: PreTrainedTokenizerBase, tokens: list[int], stop_ids: set[int]) -> Completion:
    """Cut generated ids at the first stop id; rows that finished early are padded after it."""
    end = next((pos for pos, token in enumerate(tokens) if token in stop_ids), None)
    kept = tokens if end is None else tokens[:end]
    # Special tokens are kept in the text: a model that writes `<|im_start|>` mid-answer
    # should show it in the records, and no stop/pad token is left after the cut.
    text = tokenizer.decode(kept, skip_special_tokens=False)
    return Completion(text=text, num_tokens=len(tokens) if end is None else end + 1, stopped=end is not None)
