"""The arith task: seeded multi-step word problems in GSM8K's exact format.

A problem is a chain: the question states a starting quantity and 1-3 changes to it; each
reasoning step applies one change to the previous step's result (Step 2 uses Step 1's
value, the structure Step-JEPA targets). Records are `{"question", "answer"}` with one
step per line, a `<<a*b=c>>` calculator annotation per step and a final `#### n` line,
so prepare, tokenize, train and evaluate read them exactly like GSM8K:

    {"question": "Mia has 7 shells. Then Mia finds 5 more shells. Next, Mia splits the
      shells equally into 3 bags and keeps one bag. How many shells does Mia have now?",
     "answer": "Mia has 7 + 5 = <<7+5=12>>12 shells.\\nOne bag holds 12 / 3 = <<12/3=4>>4
      shells.\\n#### 4"}

Every question is unique within and across the splits. Difficulty is `data.arith`
(stepjepa.config.ArithConfig): steps per problem, largest stated number, largest result,
which of + - * / appear.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from stepjepa.config import ArithConfig, ConfigError

NAMES = (
    "Mia",
    "Noah",
    "Ava",
    "Liam",
    "Zoe",
    "Omar",
    "Ines",
    "Ravi",
    "Lena",
    "Hugo",
    "Yuki",
    "Sara",
    "Tom",
    "Nia",
    "Ivan",
    "Rosa",
    "Ben",
    "Amir",
    "Ella",
    "Kofi",
    "Lucy",
    "Marco",
    "Priya",
    "Jack",
)
ITEMS = (
    "apples",
    "shells",
    "stickers",
    "marbles",
    "cookies",
    "pencils",
    "stamps",
    "coins",
    "books",
    "cards",
    "eggs",
    "roses",
    "beads",
    "kites",
    "cups",
    "socks",
    "candles",
    "toy cars",
)

# One (question clause, step sentence) pair per phrasing. `{v}` is the previous result,
# `{b}` the number the clause states, `{calc}` the rendered calculation with its result.
OPENINGS = ("{name} has {v} {item}.", "{name} starts with {v} {item}.", "{name} owns {v} {item}.")
CHANGES = {
    "+": (
        ("Then {name} finds {b} more {item}.", "{name} has {calc} {item}."),
        ("{friend} gives {name} {b} {item}.", "After the gift, {name} has {calc} {item}."),
        ("Next, {name} buys {b} more {item}.", "After buying more, {name} has {calc} {item}."),
    ),
    "-": (
        ("Then {name} gives {b} {item} to {friend}.", "{name} has {calc} {item} left."),
        ("{name} loses {b} of the {item}.", "After losing some, {name} has {calc} {item}."),
        ("Next, {name} sells {b} {item}.", "{name} keeps {calc} {item}."),
    ),
    "*": (
        ("Then the {item} of {name} become {b} times as many.", "{name} has {calc} {item}."),
        ("{friend} gives {name} enough {item} to have {b} times as many.", "Now {name} has {calc} {item}."),
        ("Next, {name} ends up with {b} times as many {item}.", "{name} ends up with {calc} {item}."),
    ),
    "/": (
        ("Then {name} splits the {item} equally into {b} bags and keeps one bag.", "One bag holds {calc} {item}."),
        ("{name} shares the {item} equally among {b} friends and keeps one share.", "One share is {calc} {item}."),
        ("Next, {name} keeps only one of {b} equal piles of {item}.", "One pile has {calc} {item}."),
    ),
}
QUESTIONS = (
    "How many {item} does {name} have now?",
    "How many {item} does {name} end up with?",
    "How many {item} does {name} have at the end?",
)


class ArithSpaceError(ConfigError):
    """The params allow too few distinct problems for the requested split sizes."""


def _operands(op: str, value: int, cfg: ArithConfig) -> list[int]:
    """The stated numbers `b` for which `value op b` is a whole number in [1, max_value]."""
    top = cfg.max_operand
    if op == "+":
        return list(range(1, min(top, cfg.max_value - value) + 1))
    if op == "-":
        return list(range(1, min(top, value - 1) + 1))
    if op == "*":
        return list(range(2, min(top, cfg.max_value // value) + 1))
    return [b for b in range(2, min(top, value) + 1) if value % b == 0]


def _apply(op: str, a: int, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def _problem(rng: random.Random, cfg: ArithConfig) -> dict[str, str] | None:
    """One record, or None when the drawn start value leaves no valid change at some step."""
    n_steps = rng.randint(cfg.min_steps, cfg.max_steps)
    name, friend = rng.sample(NAMES, 2)
    item = rng.choice(ITEMS)
    value = rng.randint(2, cfg.max_value)
    words = {"name": name, "friend": friend, "item": item}
    clauses, steps = [rng.choice(OPENINGS).format(v=value, **words)], []
    for _ in range(n_steps):
        choices = {op: bs for op in cfg.operations if (bs := _operands(op, value, cfg))}
        if not choices:
            return None
        op = rng.choice(sorted(choices))
        b = rng.choice(choices[op])
        result = _apply(op, value, b)
        clause, step = rng.choice(CHANGES[op])
        calc = f"{value} {op} {b} = <<{value}{op}{b}={result}>>{result}"
        clauses.append(clause.format(b=b, **words))
        steps.append(step.format(calc=calc, **words))
        value = result
    clauses.append(rng.choice(QUESTIONS).format(**words))
    return {"question": " ".join(clauses), "answer": "\n".join([*steps, f"#### {value}"])}


def generate(cfg: ArithConfig) -> dict[str, list[dict[str, str]]]:
    """`{"train": [...], "test": [...]}`: `cfg.train_size` and `cfg.test_size` records with
    no question repeated anywhere; the same `cfg` gives the same records."""
    rng = random.Random(cfg.seed)
    wanted = cfg.train_size + cfg.test_size
    seen: set[str] = set()
    records: list[dict[str, str]] = []
    # Generous: a space too small for `wanted` stops with an error instead of spinning.
    for _ in range(50 * wanted + 1000):
        record = _problem(rng, cfg)
        if record is None or record["question"] in seen:
            continue
        seen.add(record["question"])
        records.append(record)
        if len(records) == wanted:
            return {"train": records[: cfg.train_size], "test": records[cfg.train_size :]}
    raise ArithSpaceError(
        f"data.arith: found only {len(records)} distinct problems of the {wanted} asked for "
        f"(train_size + test_size); raise max_value, max_operand or max_steps, or ask for fewer"
    )


def write_splits(cfg: ArithConfig, out_dir: Path) -> dict[str, Path]:
    """Write `train.jsonl` and `test.jsonl` (one JSON object per line) to `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, records in generate(cfg).items():
        paths[split] = out_dir / f"{split}.jsonl"
        with paths[split].open("w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return paths
