"""The names every stage shares, defined once: the layouts, JEPA losses and view pairs a
config may choose, the tokenised row's columns they read, the label that means "no loss
here", and which id pads a batch.

Config validation (`config.py`), the masks, losses and collator, the held-out probe and
the benchmarks import them from here; nothing here imports torch or transformers, so the
config and the flow stay light.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

Layout = Literal["inline", "two_pass", "packed"]
"""How the two views are computed (docs/step-jepa.md 5)."""
LAYOUTS: tuple[str, ...] = get_args(Layout)

LossKind = Literal["cosine", "l2", "mse", "infonce"]
"""How view 1 is aligned with view 2 (docs/step-jepa.md 4)."""
LOSS_KINDS: tuple[str, ...] = get_args(LossKind)

Views = Literal["steps", "user_assistant"]
"""The JEPA view pair: Step 1 -> Step 2 (Step-JEPA) or user turn -> assistant turn (LLM-JEPA)."""
VIEWS: tuple[str, ...] = get_args(Views)

# Per view pair: the row columns of its first and second span, and of its validity. The
# layouts only need the end of the first span and the second span (which follows it), so
# both pairs share every mask and layout; docs/step-jepa.md 3, 5, 8.
PAIR_COLUMNS: dict[str, tuple[str, str, str]] = {
    "steps": ("step1_span", "step2_span", "jepa_valid"),
    "user_assistant": ("user_span", "assistant_span", "ua_valid"),
}

ROW_COLUMNS = ("input_ids", "labels", "step1_span", "step2_span", "jepa_valid")
"""The columns every tokenised row has (docs/data-format.md) that training and `stepjepa inspect` read."""

SFT = "sft"
"""The baseline's config name (K = 0, lambda = 0: plain supervised fine-tuning), which every
sweep trains once per seed and compares each config with; also its key in the summary."""

IGNORE_INDEX = -100
"""A label (or shifted target) that no loss is computed on: PyTorch's cross-entropy default."""

# The original LLM-JEPA pair isolates the whole assistant turn (docs/step-jepa.md 8).
INLINE_UA = (
    "train.views=user_assistant needs train.layout packed or two_pass, not inline: its assistant "
    "is isolated from the question, which the LM loss cannot be trained without"
)


def check_layout_fits_views(layout: str, views: str) -> None:
    """Raise `ValueError(INLINE_UA)` for the one pair a layout cannot hold: the one check that
    training's config, the collator and `stepjepa inspect` share."""
    if views == "user_assistant" and layout == "inline":
        raise ValueError(INLINE_UA)


def pad_id(tokenizer: Any) -> int:
    """The id to pad with; models without a pad token (Llama) pad with EOS.

    Padding positions are masked out of attention and labels, so any id is correct; no
    new pad token is added because that would change the vocabulary.
    """
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise ValueError("the tokenizer has neither a pad token nor an EOS token")
