"""`stepjepa inspect`: show how one example is laid out for training.

For a tokenised row, K (default 1, 2, 3) and view pair (default train.views; `--views
steps --views user_assistant` shows Step-JEPA's and the original LLM-JEPA's side by side)
it prints the laid-out tokens with their segments, positions and labels, the two view
positions, and the attention mask as a text grid (`--png PATH` also draws it; `--json`
prints one K as JSON, one line per view pair).
The row goes through `stepjepa.method.collate.Collator`, the very collator training batches come
from. (The module is not called `inspect`: that name would shadow the standard library's.)
The user/assistant pair has no inline layout: `--layout inline --views user_assistant` is
refused with training's message, as `stepjepa train` refuses it.

    stepjepa inspect --index 0 --k 2 --layout packed
    stepjepa inspect --id train-000001 --k 2 --layout packed --views steps --views user_assistant
    stepjepa inspect --id train-000001 --json --k 1 --views user_assistant > example.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from stepjepa import startup
from stepjepa.config import ConfigError
from stepjepa.data.tokenization import TokenizationError, load_tokenizer
from stepjepa.inputs import InputError, parquet_file, read_jsonl
from stepjepa.model_location import missing_model
from stepjepa.prompts import predictor_tokens
from stepjepa.vocabulary import IGNORE_INDEX, LAYOUTS, PAIR_COLUMNS, ROW_COLUMNS, check_layout_fits_views, pad_id

log = logging.getLogger(__name__)
MARKS = {
    "prompt": "Q",
    "step1": "1",
    "pred": "P",
    "step2": "2",
    "rest": "R",
    "copy": "C",
    "user": "U",
    "assistant": "A",
}
SEGMENT_NAMES = {
    "prompt": "prompt",
    "step1": "Step 1",
    "pred": "predictors",
    "step2": "Step 2",
    "user": "user turn",
    "assistant": "assistant turn",
    "rest": "rest",
    "copy": "copy of Step 2 / the assistant turn (packed)",
}
# Segment names of each view pair's first and second span.
SPAN_NAMES = {"steps": ("step1", "step2"), "user_assistant": ("user", "assistant")}


def load_row(path: str | Path, index: int | None = None, row_id: str | None = None) -> dict[str, Any]:
    """One row of a tokenised parquet file, by position or by `id`; bad input is an `InputError`."""
    import pyarrow.compute as pc

    table = parquet_file(path, [*ROW_COLUMNS, "id"] if row_id is not None else ROW_COLUMNS).read()
    if row_id is not None:
        found = table.filter(pc.equal(table["id"], row_id))
        if found.num_rows == 0:
            ids = table["id"]
            have = f"ids {ids[0].as_py()} .. {ids[-1].as_py()}" if len(ids) else "no rows"
            raise InputError(f"--id {row_id!r}: no such row in {path} ({have})")
        return found.slice(0, 1).to_pylist()[0]
    index = index or 0
    if not 0 <= index < table.num_rows:
        valid = f"0 to {table.num_rows - 1}" if table.num_rows else "none"
        raise InputError(f"--index {index}: {path} has {table.num_rows} rows (valid indexes: {valid})")
    return table.slice(index, 1).to_pylist()[0]


def load_steps(path: str | Path | None, row_id: str | None) -> list[str] | None:
    """The step texts of the prepared record with this id, or None if unavailable."""
    if path is None or row_id is None or not Path(path).exists():
        return None
    try:
        records = read_jsonl(path)
    except InputError as err:
        raise InputError(f"--prepared {err}") from None
    return next((list(record["steps"]) for _, record in records if record.get("id") == row_id), None)


def predictor_ids(tokenizer: Any, k: int) -> list[int]:
    """Ids of `<|predictor_1|>`..`<|predictor_K|>`, added as special tokens if missing."""
    tokens = predictor_tokens(k)
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return tokenizer.convert_tokens_to_ids(tokens)


def segments(
    row: dict[str, Any], k: int, layout: str, length: int, views: str = "steps"
) -> tuple[list[str], list | None, list | None]:
    """Segment name of each laid-out position, and the inclusive laid-out spans of the view
    pair (Step 1 / Step 2, or user turn / assistant turn)."""
    n = len(row["input_ids"])
    first, second, valid = PAIR_COLUMNS[views]
    if not row[valid]:
        return ["prompt"] * n, None, None
    (a1, e1), (a2, e2) = row[first], row[second]
    one, two = SPAN_NAMES[views]
    plain = ["prompt"] * a1 + [one] * (e1 - a1 + 1) + [two] * (e2 - e1) + ["rest"] * (n - e2 - 1)
    if layout == "packed":
        copy_start = n + k
        names = plain + ["pred"] * k + ["copy"] * (length - copy_start)
        return names, [a1, e1], [copy_start + a2 - e1 - 1, copy_start + e2 - e1 - 1]
    names = plain[: e1 + 1] + ["pred"] * k + plain[e1 + 1 :]
    return names, [a1, e1], [a2 + k, e2 + k]


def lay_out(
    row: dict[str, Any], tokenizer: Any, k: int, layout: str, steps: list[str] | None, views: str = "steps"
) -> dict[str, Any]:
    """One example laid out under one K, layout and view pair, straight from `collate`.

    Keys: id, views, layout, k, steps (texts or None), tokens, input_ids, labels,
    position_ids (each length L), attention (L x L 0/1, rows = queries), view1_index,
    view2_index, step1_span, step2_span (inclusive, in the laid-out row: the pair's first
    and second span, so for `user_assistant` the user and the assistant turn; packed: the
    second span is its copy; None without a pair), segments (name per token),
    invalid_reason.
    """
    from stepjepa.method.collate import Collator  # torch: after the input is checked (`main`)

    collator = Collator(
        k=k, layout=layout, predictor_ids=predictor_ids(tokenizer, k), pad_id=pad_id(tokenizer), views=views
    )
    batch = collator([row])
    length = int(batch["lengths"][0])
    ids = batch["input_ids"][0, :length].tolist()
    names, span1, span2 = segments(row, k, layout, length, views)
    valid = bool(batch["jepa_valid"][0])
    reason_key = "invalid_reason" if views == "steps" else "ua_invalid_reason"
    return {
        "id": row.get("id"),
        "views": views,
        "layout": layout,
        "k": k,
        "steps": steps,
        "tokens": tokenizer.batch_decode([[i] for i in ids]),
        "input_ids": ids,
        "labels": batch["labels"][0, :length].tolist(),
        "position_ids": batch["position_ids"][0, :length].tolist(),
        "attention": batch["attention_mask"][0, 0, :length, :length].int().tolist(),
        "view1_index": int(batch["view1_index"][0]) if valid else None,
        "view2_index": int(batch["view2_index"][0]) if valid else None,
        "step1_span": span1,
        "step2_span": span2,
        "segments": names,
        "invalid_reason": None if valid else row.get(reason_key),
    }


def _runs(names: list[str]) -> list[tuple[str, int, int]]:
    """Maximal runs of one segment: (name, first, last + 1)."""
    runs, start = [], 0
    for i in range(1, len(names) + 1):
        if i == len(names) or names[i] != names[start]:
            runs.append((names[start], start, i))
            start = i
    return runs


def block_grid(rec: dict[str, Any]) -> list[str]:
    """The mask summarised per segment: '#' all, '.' none, '\\' causal, '+' partial."""
    runs = _runs(rec["segments"])
    lines = ["      " + "".join(f"{MARKS[name]:>4}" for name, _, _ in runs)]
    for name, q0, q1 in runs:
        cells = []
        for _, k0, k1 in runs:
            block = [row[k0:k1] for row in rec["attention"][q0:q1]]
            flat = [a for r in block for a in r]
            causal = q0 == k0 and all(a == (j <= i) for i, r in enumerate(block) for j, a in enumerate(r))
            cells.append("#" if all(flat) else "." if not any(flat) else "\\" if causal else "+")
        lines.append(f"  {MARKS[name]:>3} " + "".join(f"{c:>4}" for c in cells))
    return lines


def render_text(rec: dict[str, Any], full_grid: bool = False) -> str:
    """Token table with segments and view markers, then the mask per segment (rows =
    queries) and, with `full_grid`, per token."""
    head = f"== {rec['id']}  views={rec.get('views', 'steps')}  layout={rec['layout']}  K={rec['k']}"
    lines = [head + ("" if rec["view1_index"] is not None else f"  (no JEPA pair: {rec['invalid_reason']})")]
    lines += [f"  step {i}: {s}" for i, s in enumerate(rec["steps"] or [], start=1)]
    lines.append("  idx  pos seg  label  token")
    views = {rec["view1_index"]: "<- view 1", rec["view2_index"]: "<- view 2"}
    for i, (tok, pos, seg, lab) in enumerate(zip(rec["tokens"], rec["position_ids"], rec["segments"], rec["labels"])):
        label = "-" if lab == IGNORE_INDEX else str(lab)
        lines.append(f"  {i:>3} {pos:>4} {MARKS[seg]:>3} {label:>6}  {tok!r} {views.get(i, '')}".rstrip())
    lines.append("  segments: " + ", ".join(f"{MARKS[seg]} {name}" for seg, name in SEGMENT_NAMES.items()))
    lines.append("  mask per segment (rows = queries; # all, . none, \\ causal, + partial):")
    lines += block_grid(rec)
    if full_grid:
        marks = "".join(MARKS[s] for s in rec["segments"])
        lines += ["  mask per token (rows = queries, # = may attend):", f"        {marks}"]
        lines += [
            f"  {marks[i]} {i:>4} " + "".join("#" if a else "." for a in row) for i, row in enumerate(rec["attention"])
        ]
    return "\n".join(lines)


def mask_figure(records: list[dict[str, Any]]) -> Any:
    """One mask panel per record: black = may attend, white = masked; segments named on both
    axes between their boundary lines, and the query rows of the two views marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(6.5 * len(records), 7), squeeze=False, layout="constrained")
    for ax, rec in zip(axes[0], records):
        ax.imshow(rec["attention"], cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        runs = _runs(rec["segments"])
        for _, start, _ in runs[1:]:
            ax.axhline(start - 0.5, color="tab:blue", lw=0.6)
            ax.axvline(start - 0.5, color="tab:blue", lw=0.6)
        middles, names = [(a + b - 1) / 2 for _, a, b in runs], [SEGMENT_NAMES[n] for n, _, _ in runs]
        ax.set_xticks(middles, names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(middles, names, fontsize=7)
        first, second = (SEGMENT_NAMES[n] for n in SPAN_NAMES[rec.get("views", "steps")])
        for key, color, what in (
            ("view1_index", "tab:red", "last predictor" if rec["k"] else f"end of {first}"),
            ("view2_index", "tab:green", f"end of {second}"),
        ):
            if rec[key] is not None:
                ax.axhline(rec[key], color=color, lw=1.2, label=f"view {key[4]}: {what} (query row {rec[key]})")
        ax.set_title(
            f"{rec['id']}  {rec.get('views', 'steps')}  {rec['layout']}  K={rec['k']}\n"
            "black = may attend, white = masked",
            fontsize=9,
        )
        ax.set_xlabel("key (attended token)")
        ax.set_ylabel("query (attending token)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=7)
    return fig


def save_png(records: list[dict[str, Any]], path: str | Path) -> None:
    import matplotlib.pyplot as plt

    fig = mask_figure(records)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stepjepa inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--params", default="params.yaml", help="defaults for K, layout and model dir")
    p.add_argument("--data", default="data/tokenized/train.parquet", help="tokenised rows (parquet)")
    p.add_argument("--prepared", default="data/prepared/train.jsonl", help="prepared records, for step texts")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=0, help="row position in --data")
    which.add_argument("--id", help="row id, e.g. train-000001")
    p.add_argument("--k", type=int, action="append", help="predictor tokens (repeatable; default 1, 2, 3)")
    p.add_argument("--layout", choices=LAYOUTS, help="default: train.layout from --params, else inline")
    p.add_argument(
        "--views",
        action="append",
        choices=list(PAIR_COLUMNS),
        help="view pair (repeatable, e.g. both side by side; default: train.views from --params)",
    )
    p.add_argument("--model-dir", help="tokenizer directory; default: model.name_or_path from --params")
    p.add_argument("--full-grid", action="store_true", help="also print the mask token by token")
    p.add_argument("--png", help="also draw the masks to this PNG file")
    p.add_argument("--json", action="store_true", help="print one --k/--layout as JSON instead of text")
    return p


def _defaults(params: str) -> tuple[Any, Any, str, str]:
    """(train.k, train.layout, model.name_or_path, train.views) from params.yaml where present."""
    from stepjepa.config import Config, load_config

    cfg = load_config(params) if Path(params).exists() else Config()
    train = getattr(cfg, "train", None)
    return (
        getattr(train, "k", None),
        getattr(train, "layout", None),
        cfg.model.name_or_path,
        getattr(train, "views", "steps"),
    )


def _pairs(requested: list[str] | None, default: str, row: dict[str, Any]) -> list[str]:
    """The view pairs to show (default: train.views); the row must have their columns."""
    pairs = list(dict.fromkeys(requested or [default]))
    for views in pairs:
        if PAIR_COLUMNS[views][2] not in row:
            column = PAIR_COLUMNS[views][2]
            raise InputError(f"--views {views}: --data has no {column} column; rerun the tokenize stage")
    return pairs


def _check_layout(layout: str, pairs: list[str]) -> None:
    """Refuse what training refuses (`--layout inline --views user_assistant`), with its message:
    inspect shows the layout asked for or none, never a stand-in for it."""
    for views in pairs:
        try:
            check_layout_fits_views(layout, views)
        except ValueError as err:
            raise InputError(str(err)) from None


def _tokenizer(model_dir: str, from_flag: bool) -> Any:
    # A folder that is not there is told before transformers loads (seconds of CPU).
    reason = missing_model(model_dir)
    if reason is None:
        try:
            return load_tokenizer(model_dir)
        except (OSError, TokenizationError) as err:  # transformers' message may not name the directory
            reason = " ".join(str(err).split())
    source = "--model-dir" if from_flag else "model.name_or_path"
    raise InputError(f"{source} {model_dir}: cannot load the tokenizer ({reason})")


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        k_default, layout_default, model_dir, views_default = _defaults(args.params)
        ks = args.k or ([k_default] if args.json and k_default is not None else [1, 2, 3])
        if any(k < 0 for k in ks):
            parser.error(f"--k must be >= 0; got {ks}")
        if args.json and len(ks) != 1:
            parser.error("--json shows one example layout: give exactly one --k")
        # The row first: a missing or bad --data is reported without waiting for transformers.
        row = load_row(args.data, None if args.id else args.index, args.id)
        pairs = _pairs(args.views, views_default, row)
        steps = load_steps(args.prepared, row.get("id"))
        layout = args.layout or layout_default or "inline"
        _check_layout(layout, pairs)
        tokenizer = _tokenizer(args.model_dir or model_dir, args.model_dir is not None)
    except (InputError, ConfigError) as err:
        print(f"stepjepa inspect: error: {err}", file=sys.stderr)
        return 2
    startup.resume()  # transformers is in: the cyclic collector back on (`stepjepa.startup`)
    records = [lay_out(row, tokenizer, k, layout, steps, views) for views in pairs for k in ks]
    if args.png:
        save_png(records, args.png)
        log.info("wrote %s", args.png)
    if args.json:
        print("\n".join(json.dumps(rec, ensure_ascii=False) for rec in records))
    else:
        print("\n\n".join(render_text(rec, args.full_grid) for rec in records))
    return 0
