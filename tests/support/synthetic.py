"""Synthetic GSM8K-style records and the tiny model's config the tests build from them.

Nothing here downloads: the conftest fixtures build the model and tokenizer from these, as
the `build_model` stage builds the embedded default, only smaller.
"""

from __future__ import annotations

import random

from stepjepa.config import DataConfig, TinyModelConfig
from stepjepa.data.prepare import to_conversation
from stepjepa.data.steps import Solution, split_record

NAMES = ["Natalia", "Weng", "Betty", "Julie", "James", "Albert", "Mark", "Tina"]
ITEMS = ["clips", "apples", "pages", "dollars", "marbles", "cookies"]

TINY_TEST_MODEL = TinyModelConfig(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    seed=0,
)


def synthetic_raw_record(rng: random.Random, n_steps: int | None = None) -> dict:
    """A GSM8K-format record (`question`, `answer` with annotations and `####`)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(2, 60)
    question = f"{name} has {total} {item}. "
    lines = []
    for _ in range(n_steps if n_steps is not None else rng.randint(2, 5)):
        add = rng.randint(1, 40)
        question += f"Then {name} gets {add} more {item}. "
        lines.append(f"{name} now has {total}+{add} = <<{total}+{add}={total + add}>>{total + add} {item}.")
        total += add
    question += f"How many {item} does {name} have?"
    return {"question": question, "answer": "\n".join(lines) + f"\n#### {total}"}


def synthetic_conversations(n: int, seed: int = 0) -> list[dict]:
    """Prepared records (docs/data-format.md) built from synthetic raw records."""
    rng, cfg, out = random.Random(seed), DataConfig(), []
    for i in range(n):
        solution: Solution = split_record(synthetic_raw_record(rng))
        out.append({"id": f"train-{i + 1:06d}", "source": "synthetic", "line": i + 1} | to_conversation(solution, cfg))
    return out
