"""The runs of a sweep (a K x lambda x view pair x axes grid, or one factor at a time around
a base config): run specs, names and cache keys (no orchestration here).

`pipelines/sweep.py` turns these specs into Prefect tasks; everything that decides *what*
runs lives here so it can be tested without Prefect.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import itertools
import json
import textwrap
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model

from stepjepa.config import WEIGHT_NEUTRAL_KEYS, Config, SweepConfig, TrainConfig, config_from_dict, set_dotted
from stepjepa.vocabulary import SFT


@dataclass(frozen=True)
class RunSpec:
    """One training run of the sweep."""

    name: str
    k: int
    lam: float
    seed: int
    overrides: tuple[tuple[str, Any], ...]
    """(dotted key, typed value) pairs `resolve` sets in the params tree; a run's child
    process reads only the resolved config.yaml. Values stay typed: nothing is printed to a
    string and parsed back on the way from the grid to the loss."""
    views: str = "steps"
    """The JEPA view pair (`train.views`); the baseline is `steps`, where it plays no part."""
    axes: tuple[tuple[str, Any], ...] = ()
    """(`sweep.axes` key, value) pairs where this run differs from the base: its name says them."""
    factor: str | None = None
    """`sweep.design: one_at_a_time` only: the factor this config varies (`k`, `lambda`,
    `views` or an axis key), `base` for the base config; None for SFT and in a grid."""

    @property
    def is_baseline(self) -> bool:
        return self.k == 0 and self.lam == 0

    @property
    def config_name(self) -> str:
        """The name shared by all seeds of one (view pair, K, lambda) config."""
        return config_name(self.k, self.lam, self.views, self.axes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"is_baseline": self.is_baseline, "config_name": self.config_name}


@dataclass(frozen=True)
class RunResult:
    """One run of the sweep on one split, as the flow collects it and `stepjepa.sweep.report` and
    `stepjepa.sweep.plots` read it. A completed run carries its evaluation (the fields of
    `report.read_run_result`); a failed or stopped one its `error`."""

    spec: RunSpec
    status: Literal["completed", "failed", "stopped"]
    run_id: str | None = None
    """Its MLflow run."""
    run_folder: str | None = None
    """The name of its run folder in the sweep's runs directory."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The evaluation's `metrics.json`: accuracies, held-out NLLs, view diagnostics."""
    correct_strict: list[bool] = field(default_factory=list)
    """Per question, in file order."""
    heldout: list[dict[str, Any]] = field(default_factory=list)
    """Per example: the held-out NLL of the answer and of Step 2 (`heldout.jsonl`)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """The training metrics, one dict per logged step (`metrics.jsonl`)."""
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


# Name prefix per view pair: Step-JEPA keeps the names it always had.
VIEW_PREFIX = {"steps": "", "user_assistant": "ua_"}


def axis_text(value: Any) -> str:
    """An axis value as a name part: `0.001`, `false`, `two_pass`, `q_proj+v_proj`."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "+".join(map(axis_text, value))
    return str(value)


def config_name(k: int, lam: float, views: str = "steps", axes: tuple[tuple[str, Any], ...] = ()) -> str:
    """`sft`, `k2_lam0.5` (Step-JEPA) or `ua_k2_lam0.5` (the original LLM-JEPA pair), then a
    `_key-value` part per axis value that differs from the base (`k2_lam0.5_loss-mse`)."""
    name = SFT if k == 0 and lam == 0 else f"{VIEW_PREFIX[views]}k{k}_lam{lam:g}"
    return name + "".join(f"_{key}-{axis_text(value)}" for key, value in axes)


# A point of the sweep: (K, lambda, view pair, every axis's value, factor).
Point = tuple[int, float, str, tuple[tuple[str, Any], ...], str | None]


def _points(sweep: SweepConfig) -> list[Point]:
    """Every config but SFT, in order: the full grid, or the base config then each factor's
    other values with the rest at the base (`sweep.design`)."""
    keys, values = list(sweep.axes), list(sweep.axes.values())
    if sweep.design == "grid":
        return [
            (k, float(lam), v, tuple(zip(keys, combo)), None)
            for v in sweep.views
            for k in sweep.ks
            for lam in sweep.lambdas
            for combo in itertools.product(*values)
        ]
    k0, lam0, v0 = sweep.ks[0], float(sweep.lambdas[0]), sweep.views[0]
    base = tuple((key, vals[0]) for key, vals in zip(keys, values))
    points = [(k0, lam0, v0, base, "base")]
    points += [(k, lam0, v0, base, "k") for k in sweep.ks[1:]]
    points += [(k0, float(lam), v0, base, "lambda") for lam in sweep.lambdas[1:]]
    points += [(k0, lam0, v, base, "views") for v in sweep.views[1:]]
    for i, (key, vals) in enumerate(zip(keys, values)):
        points += [(k0, lam0, v0, base[:i] + ((key, value),) + base[i + 1 :], key) for value in vals[1:]]
    return points


def expand_grid(sweep: SweepConfig) -> list[RunSpec]:
    """Baseline first for every seed, then each config (`_points`); duplicates removed.

    The baseline is one run per seed whatever the view pairs, at every axis's base value:
    with lambda = 0 no view is computed. Step-JEPA runs (`steps`) keep the names they had
    before view pairs and axes were sweep fields.
    """
    # Training runs log into the sweep's experiment, as children of its parent run. An axis
    # of layout or loss replaces the sweep's single value (its first value is that value).
    base = {key: values[0] for key, values in sweep.axes.items()}
    common = [
        ("train.layout", base.get("layout", sweep.layout)),
        ("train.loss", base.get("loss", sweep.loss)),
        ("train.experiment", sweep.experiment),
    ]
    common += sorted(sweep.overrides.items())
    grid = [(0, 0.0, "steps", tuple(base.items()), None), *_points(sweep)]
    specs, seen = [], set()
    for seed in sweep.seeds:
        for k, lam, views, axes, factor in grid:
            if (k, lam) == (0, 0.0):
                views = "steps"
            differ = tuple(sorted((key, value) for key, value in axes if value != base[key]))
            if (k, lam, views, differ, seed) in seen:
                continue
            seen.add((k, lam, views, differ, seed))
            per_run = dict(common) | {f"train.{key}": value for key, value in axes}
            overrides = (
                ("train.k", k),
                ("train.lambda", lam),
                ("train.seed", seed),
                ("train.views", views),
                *per_run.items(),
            )
            name = f"{config_name(k, lam, views, differ)}_s{seed}"
            specs.append(RunSpec(name, k, lam, seed, overrides, views, differ, factor))
    return specs


def resolve(base: dict[str, Any], spec: RunSpec) -> Config:
    """The full, validated config of one run: the params tree plus the spec's overrides."""
    tree = json.loads(json.dumps(base))
    for key, value in spec.overrides:
        set_dotted(tree, key, value)
    return config_from_dict(tree, f"sweep run {spec.name}")


# The train keys every sweep run gets from the sweep, and the sweep key that sets them.
SWEPT_KEYS = {
    "k": "sweep.ks",
    "lambda": "sweep.lambdas",
    "seed": "sweep.seeds",
    "views": "sweep.views",
    "loss": "sweep.loss",
    "layout": "sweep.layout",
    "experiment": "sweep.experiment",
}
# SFT is K = 0, lambda = 0 on the `steps` pair by definition: its values of these say nothing.
_NOT_SFTS = ("k", "lambda", "views")


def replaced_settings(base: dict[str, Any], sweep: SweepConfig, specs: list[RunSpec], source: str) -> list[str]:
    """One line per train key that `source`'s train section sets but the sweep replaces
    (`dvc exp run -S train.k=1` meant for `sweep.ks`): it names the key, its value, where it
    came from and the sweep key to use. "Sets" means a value other than the default in
    `stepjepa.config.TrainConfig` (the shipped params file spells the defaults out), and
    one that not every run gets (SFT's K and lambda aside): a value the sweep also gives
    every run is not lost."""
    train = base.get("train") or {}
    given = config_from_dict(base, source).train.model_dump(mode="json", by_alias=True)
    defaults = TrainConfig().model_dump(mode="json", by_alias=True)
    swept = SWEPT_KEYS | {key: f"sweep.axes.{key}" for key in sweep.axes}
    lines = []
    for key, sweep_key in swept.items():
        if key not in train or key not in given or given[key] == defaults[key]:
            continue
        runs = [s for s in specs if not (key in _NOT_SFTS and s.is_baseline)]
        got = sorted({json.dumps(dict(s.overrides)[f"train.{key}"]) for s in runs})
        if got != [json.dumps(given[key])]:
            lines.append(
                f"train.{key}: {json.dumps(given[key])} in {source}'s train section is not used: the sweep sets "
                f"train.{key} of its runs ({', '.join(got)}); to sweep other values, set {sweep_key} instead"
            )
    return lines


# --- A sweep's choices from a caller (the Prefect form, `-p sweep=...`) ------------------


def attribute_docs(cls: type) -> dict[str, str]:
    """`{field: docstring}` of a class whose fields are documented by the string below them
    (pydantic reads those only with `use_attribute_docstrings`, which `Section` leaves off)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        field.target.id: inspect.cleandoc(doc.value.value)
        for field, doc in zip(body, body[1:])
        if isinstance(field, ast.AnnAssign)
        and isinstance(field.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
        and isinstance(doc.value.value, str)
    }


def _unconstrained(annotation: Any) -> Any:
    """`annotation` with its types and `Literal` choices but without constraints:
    `list[Annotated[int, Field(ge=0)]]` -> `list[int]`. A value that breaks only a
    constraint then reaches `choose`, whose error names the key and where the value came from."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _unconstrained(args[0])
    if not args or origin is Literal:
        return annotation
    if origin in (Union, types.UnionType):
        return Union[tuple(map(_unconstrained, args))]  # noqa: UP007 - `|` has no form for a computed tuple
    return origin[tuple(map(_unconstrained, args))]


class _Choices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The fields that were set: each replaces the params file's value."""
        return {name: value for name in type(self).model_fields if (value := getattr(self, name)) is not None}


_CHOICES_DOC = """A sweep's choices from its caller; a field left empty (None) takes its value from the
`sweep` section of the params file. Derived from `SweepConfig`: its fields, types, `Literal`
choices and docs, without its constraints, which `choose` checks with the params file's values."""


def _choices_model(config: type[BaseModel]) -> type[_Choices]:
    # A grid field sets the train key of the same name in every run (sweep.layout ->
    # train.layout): where the sweep's field has no docstring of its own, that key's says it.
    docs = attribute_docs(TrainConfig) | attribute_docs(config)
    fields = {}
    for name, info in config.model_fields.items():
        default = json.dumps(info.get_default(call_default_factory=True))
        empty = f"Empty: `sweep.{name}` of the params file (default {default})."
        text = f"{' '.join(docs[name].split())} {empty}" if name in docs else empty  # one line in the form
        fields[name] = (_unconstrained(info.annotation) | None, Field(None, description=text))
    return create_model("SweepChoices", __base__=_Choices, __doc__=_CHOICES_DOC, **fields)


SweepChoices = _choices_model(SweepConfig)


def choose(base: dict[str, Any], choices: _Choices, source: str) -> SweepConfig:
    """The sweep section of the params tree `base` (read from `source`) with `choices` in place
    of the file's values; an invalid one is a `ConfigError` that names it and says it came
    from the flow run's parameters, not the file."""
    given = choices.given()
    where = f"{source} with flow parameters {', '.join(f'{k}={v!r}' for k, v in given.items())}" if given else source
    return config_from_dict(base | {"sweep": base.get("sweep", {}) | given}, where).sweep


LIBRARY = Path(__file__).resolve().parents[1]


# What reports runs (MLflow) or reads finished ones (the sweep's table, verdicts, figures and
# statistics): a fix there must not retrain a sweep. No other module of the library imports
# these but `tracking/` (tests/sweep/test_sweep_grid.py), so a run never executes them.
REPORT_ONLY = ("tracking/", "stats.py", "sweep/report.py", "sweep/plots.py", "sweep/compare.py")


def library_sources() -> list[Path]:
    """Every source file of the library that can change a trained model or its answers: all
    of `stepjepa/` but `REPORT_ONLY`."""
    return sorted(p for p in LIBRARY.rglob("*.py") if not p.relative_to(LIBRARY).as_posix().startswith(REPORT_ONLY))


def data_fingerprint(paths: list[str | Path]) -> str:
    """Content hash of what a run's result depends on besides its config: the data files,
    a local model directory (a hub id is hashed by name), and the library's source.

    Never where results are logged or which folder holds the runs: the same config on the
    same data is the same run on every machine and for every tracking server."""
    digest = hashlib.sha256()
    files = [(str(p.relative_to(LIBRARY)), p) for p in library_sources()]
    for path in map(Path, paths):
        group = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        files += [(p.name, p) for p in group]
    for name, file in files:
        digest.update(name.encode())
        digest.update(file.read_bytes() if file.is_file() else str(file).encode())
    return digest.hexdigest()[:32]


def _identity(config: Config, sections: tuple[str, ...]) -> dict[str, Any]:
    # The weight-neutral keys change neither a run's weights nor its answers: not part of a key.
    tree = config.model_dump(mode="json", by_alias=True)
    return {
        name: {k: v for k, v in tree[name].items() if f"{name}.{k}" not in WEIGHT_NEUTRAL_KEYS} for name in sections
    }


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def cache_key(config: Config, data_fingerprint: str) -> str:
    """The trained model's identity: same key, same weights, whoever asks.

    Every section but `sweep` and `eval`: growing the grid, changing concurrency or
    retries, or evaluating differently reuses the runs already trained.
    """
    sections = tuple(name for name in type(config).model_fields if name not in ("sweep", "eval"))
    return _digest({"config": _identity(config, sections), "data": data_fingerprint})


def config_key(config: Config, data_fingerprint: str) -> str:
    """The config's identity over its seeds: the trained model's key with the seed left out.
    The registry names the champion's config by it, so that a later sweep that trains the
    same config (any seeds) can compare its own best with it."""
    unseeded = config.model_copy(update={"train": config.train.model_copy(update={"seed": 0})})
    return cache_key(unseeded, data_fingerprint)


def eval_cache_key(config: Config, data_fingerprint: str) -> str:
    """The evaluation's identity: the trained model's key plus the `eval` settings."""
    return _digest({"model": cache_key(config, data_fingerprint), "eval": _identity(config, ("eval",))})


# --- Run folders: the sweep's real products, and what says they are complete -------------


def run_folder(runs_dir: str | Path, spec: RunSpec, key: str) -> Path:
    """`<runs_dir>/<name>-<key[:8]>`: a changed config or data never resumes or reuses an old run."""
    return Path(runs_dir) / f"{spec.name}-{key[:8]}"


def is_trained(run_dir: Path) -> bool:
    """The final model was saved (saving is the last step of training)."""
    return (run_dir / "model" / "config.json").is_file() and (run_dir / "metrics.jsonl").is_file()


def eval_folder(run_dir: Path, split: str, eval_key: str) -> Path:
    """Where the evaluation of `split` with the settings `eval_key` stands for is, or goes:
    `eval/<split>-<key[:8]>/`, one folder per setting side by side, so that switching
    `eval.limit` back and forth evaluates each setting once. An evaluation of the old layout
    (`eval/<split>/`, one per run folder: run folders already on disk or in a DVC cache)
    with the same settings is read where it is."""
    legacy = run_dir / "eval" / split
    if _marker_is(legacy, eval_key):
        return legacy
    return run_dir / "eval" / f"{split}-{eval_key[:8]}"


def _marker_is(folder: Path, eval_key: str) -> bool:
    marker = folder / "eval_key"
    return marker.is_file() and marker.read_text().strip() == eval_key


def is_evaluated(run_dir: Path, split: str, eval_key: str) -> bool:
    """`split` was evaluated with the settings `eval_key` stands for (marker written last)."""
    return _marker_is(eval_folder(run_dir, split, eval_key), eval_key)


def mark_evaluated(run_dir: Path, split: str, eval_key: str) -> None:
    (eval_folder(run_dir, split, eval_key) / "eval_key").write_text(eval_key + "\n")


def evaluation_key(folder: Path) -> str | None:
    """The settings key of a complete evaluation folder (either layout), None if incomplete."""
    marker = folder / "eval_key"
    return marker.read_text().strip() if marker.is_file() else None
