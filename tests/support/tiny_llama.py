"""A tiny random Llama and hand-written tokenised rows, with the reference computations the
forward, view-pair and held-out tests share (plain SFT loss, views by layout)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from stepjepa.method.collate import collate
from stepjepa.method.forward import _two_pass_views, gather_views, last_hidden, model_parts

PRED = [296, 297, 298, 299]


def tiny_llama(impl: str, dtype: torch.dtype = torch.float32, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        attn_implementation=impl,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def row(prompt: list[int], step1: list[int], step2: list[int], rest: list[int]) -> dict:
    """A tokenised row (docs/data-format.md): labels on everything after the prompt."""
    ids = prompt + step1 + step2 + rest
    a1, e1 = len(prompt), len(prompt) + len(step1) - 1
    valid = bool(step1 and step2)
    return {
        "input_ids": ids,
        "labels": [-100] * len(prompt) + ids[len(prompt) :],
        "step1_span": [a1, e1] if valid else None,
        "step2_span": [e1 + 1, e1 + len(step2)] if valid else None,
        "jepa_valid": valid,
    }


ROWS = [
    row([10, 11, 12, 13], [20, 21, 22], [30, 31, 32, 33], [40, 41, 42]),
    row([14, 15, 16], [], [], [43, 44, 45, 46, 47, 48]),  # no JEPA pair
    row([17, 18], [23, 24], [34, 35, 36, 37], [49, 50]),
    row([19], [25, 26], [38, 39, 51, 52, 53], []),  # Step 2 ends the row
]


def ua_row(user: list[int], assistant: list[int], rest: list[int], valid: bool = True) -> dict:
    """A row whose labels are the assistant turn; its steps pair sits inside the assistant."""
    ids, u_end = user + assistant + rest, len(user) - 1
    a_end = u_end + len(assistant)
    steps = len(assistant) >= 5
    return {
        "input_ids": ids,
        "labels": [-100] * len(user) + assistant + [-100] * len(rest),
        "step1_span": [u_end + 1, u_end + 2] if steps else None,
        "step2_span": [u_end + 3, u_end + 4] if steps else None,
        "jepa_valid": steps,
        "user_span": [0, u_end] if valid else None,
        "assistant_span": [u_end + 1, a_end] if valid else None,
        "ua_valid": valid,
    }


UA_ROWS = [
    ua_row([10, 11, 12, 13, 14], [30, 31, 32, 33, 34, 35], [5]),
    ua_row([15, 16], [36, 37, 38], [5], valid=False),  # e.g. truncated inside the assistant
    ua_row([17, 18, 19], [39, 40, 41, 42, 43, 44, 45, 46], []),  # the assistant ends the row
    ua_row([20, 21, 22, 23, 24, 25, 26], [47, 48], [5]),
]


def batch_for(rows: list[dict], k: int, layout: str, pair: str = "steps") -> dict:
    return collate(rows, k=k, layout=layout, predictor_ids=PRED[:k], pad_id=0, views=pair)


@torch.no_grad()
def views(model, rows: list[dict], k: int, layout: str, pair: str = "steps") -> tuple[torch.Tensor, torch.Tensor]:
    batch, parts = batch_for(rows, k, layout, pair), model_parts(model)
    valid = batch["jepa_valid"].nonzero().flatten()
    if layout == "two_pass":
        return _two_pass_views(parts, batch, valid)
    hidden = last_hidden(parts, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    return gather_views(hidden, batch, valid)


@torch.no_grad()
def sft_loss(model, rows: list[dict]) -> torch.Tensor:
    """Plain causal SFT loss by transformers' own default path (2D padding mask, its shift)."""
    batch = batch_for(rows, 0, "inline")
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    padding = torch.arange(batch["lm_input_ids"].shape[1]) < lengths[:, None]
    return model(
        input_ids=batch["lm_input_ids"], attention_mask=padding.long(), labels=batch["lm_labels"], use_cache=False
    ).loss
