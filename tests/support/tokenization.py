"""What the tokenisation tests share: per-family facts, records to encode, hypothesis
strategies for step texts, and the tokenizer's own offsets (the independent reference the
tests re-derive every span from)."""

from __future__ import annotations

import string

import numpy as np
from hypothesis import strategies as st
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from stepjepa.prompts import STEP_SEPARATOR
from tests.support import tokenizer_families as families

DATE = "26 Jul 2024"
# The special token that closes the assistant message, per family.
END_OF_TURN = {
    "byte_level_bpe": "<|eot_id|>",
    "metaspace_unigram": "<end_of_turn>",
    "merged_newline_bpe": "<|im_end|>",
}
# Families whose decoder gives back exactly the text (Metaspace drops a leading space).
DECODES_EXACTLY = {"byte_level_bpe", "merged_newline_bpe"}
FINAL = "The final answer is \\boxed{72}."
NO_LIMIT = 1_000_000

WORDS = ["Janet", "has", "eggs", "The", "total", "is", "She", "sells", "for", "each", "day", "So"]
STEP_CHARS = string.ascii_letters + string.digits + string.punctuation + " "
SPECIAL_TEXTS = [t for name in families.FAMILIES for t in families.FAMILIES[name]().all_special_tokens]

piece = st.one_of(
    st.sampled_from(WORDS),
    st.integers(0, 99_999).map(str),
    st.sampled_from(["$", "=", ".", ",", "+", "*", "/", "%", "(", ")", "$5", "=12", "<<4*3=12>>"]),
    st.text(STEP_CHARS, min_size=1, max_size=5),
)
random_step = (
    st.tuples(
        st.lists(st.tuples(piece, st.sampled_from([" ", " ", "", "  "])), min_size=1, max_size=8),
        st.sampled_from(["", ".", "5", "12.", "$3"]),
    )
    .map(lambda t: ("".join(p + sep for p, sep in t[0]) + t[1]).strip())
    .filter(lambda s: s and not any(tok in s for tok in SPECIAL_TEXTS))
)
# Steps like the training corpus's, where the merged-newline family's merges straddle steps.
corpus_step = st.randoms(use_true_random=False).map(families.gsm8k_like_step)
step_text = st.one_of(random_step, corpus_step)


def make_record(steps: list[str], question: str = "How many eggs?", rid: str = "train-000001") -> dict:
    content = STEP_SEPARATOR.join([*steps, FINAL])
    return {
        "id": rid,
        "steps": steps,
        "total_steps": len(steps),
        "messages": [
            {"role": "system", "content": "Solve step by step."},
            {"role": "user", "content": question},
            {"role": "assistant", "content": content},
        ],
    }


def copy_with_template(tok, template: str | None):
    """A separate tokenizer (own backend) so tests never alter the cached family builders."""
    copy = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.backend_tokenizer.to_str()))
    copy.chat_template = template
    return copy


def offsets_of(tok, text: str) -> tuple[list[int], np.ndarray]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], np.asarray(enc["offset_mapping"]).reshape(-1, 2)
