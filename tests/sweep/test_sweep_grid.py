"""What a sweep runs: the grid, the baseline, names, resolved configs and cache keys; the
choices a caller gives the flow, and the flow's plumbing that needs no Prefect run."""

import ast
from pathlib import Path

import pytest
import yaml

from stepjepa.config import ConfigError, SweepConfig, config_from_dict
from stepjepa.sweep.specs import RunSpec, cache_key, expand_grid, resolve
from tests.support.projects import ROOT


def test_seed_grid_plus_baseline_per_seed():
    specs = expand_grid(SweepConfig(ks=[1, 2, 3], lambdas=[0.1, 0.5, 2.0], seeds=[0, 1]))
    assert len(specs) == 2 * (1 + 9)
    names = [s.name for s in specs]
    assert names[0] == "sft_s0" and names[10] == "sft_s1" and "k2_lam0.5_s1" in names
    assert len(set(names)) == len(names)
    assert sum(s.is_baseline for s in specs) == 2


def test_baseline_not_duplicated_when_grid_contains_it():
    specs = expand_grid(SweepConfig(ks=[0, 1], lambdas=[0.0, 1.0]))
    assert [s.name for s in specs] == ["sft_s0", "k0_lam1_s0", "k1_lam0_s0", "k1_lam1_s0"]


def test_resolved_config_carries_spec_and_overrides():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    sweep = SweepConfig(ks=[2], lambdas=[0.5], layout="packed", overrides={"train.max_steps": 7})
    spec = expand_grid(sweep)[1]
    cfg = resolve(base, spec)
    assert (cfg.train.k, cfg.train.lambda_, cfg.train.layout, cfg.train.max_steps) == (2, 0.5, "packed", 7)
    assert cache_key(cfg, "data-a") == cache_key(resolve(base, spec), "data-a")
    assert cache_key(cfg, "data-a") != cache_key(cfg, "data-b")
    assert cache_key(cfg, "data-a") != cache_key(resolve(base, expand_grid(sweep)[0]), "data-a")


def test_bad_override_names_the_run_and_key():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    spec = expand_grid(SweepConfig(ks=[1], lambdas=[1.0], overrides={"train.nope": 1}))[0]
    with pytest.raises(ConfigError, match=r"(?s)sweep run sft_s0.*train\.nope"):
        resolve(base, spec)


@pytest.mark.parametrize(
    "sweep, key",
    [
        ({"ks": []}, "sweep.ks"),
        ({"ks": [-1]}, "sweep.ks.0"),
        ({"lambdas": ["x"]}, "sweep.lambdas.0"),
        ({"lambdas": [float("nan")]}, "sweep.lambdas.0"),
        ({"seeds": []}, "sweep.seeds"),
    ],
)
def test_bad_sweep_params_are_rejected_naming_the_key(sweep, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"sweep": sweep})


def _key_pair(base: dict, changes: dict) -> tuple[str, str]:
    """(training key, eval key) of the K=2 run after `changes` (dotted keys) to `base`."""
    import copy

    from stepjepa.config import set_dotted
    from stepjepa.sweep.specs import eval_cache_key

    tree = copy.deepcopy(base)
    for dotted, value in changes.items():
        set_dotted(tree, dotted, value)
    sweep = config_from_dict(tree).sweep
    spec = next(s for s in expand_grid(sweep) if s.k == 2 and s.lam == 0.5)
    cfg = resolve(tree, spec)
    return cache_key(cfg, "data-a"), eval_cache_key(cfg, "data-a")


@pytest.mark.parametrize(
    "changes",
    [
        {"sweep.ks": [2, 4]},
        {"sweep.lambdas": [0.5, 5.0]},
        {"sweep.max_concurrent": 2},
        {"sweep.retries": 3},
        {"sweep.registered_model_name": "other"},
        {"train.log_every": 1},
        {"train.checkpoint_every": 5},
        {"train.keep_checkpoints": 9},
        {"eval.batch_size": 3},
        {"sweep.experiment": "elsewhere"},
        {"sweep.overrides": {"train.eval_every": 20}},
        {"sweep.overrides": {"train.log_model": False}},
    ],
)
def test_what_changes_no_result_keeps_both_keys(changes):
    """Growing the grid or tuning throughput must reuse the runs already trained and evaluated."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"sweep": {"ks": [2], "lambdas": [0.5]}}
    assert _key_pair(base, changes) == _key_pair(base, {})


@pytest.mark.parametrize(
    "changes, trains_again",
    [
        ({"eval.limit": 7}, False),
        ({"eval.max_new_tokens": 9}, False),
        ({"eval.split": "train"}, False),
        ({"train.learning_rate": 0.5}, True),
        ({"train.max_steps": 3}, True),
        ({"tokenize.max_length": 64}, True),
        ({"model.dtype": "bfloat16"}, True),
        ({"sweep.layout": "packed"}, True),
        ({"sweep.overrides": {"train.epochs": 2}}, True),
    ],
)
def test_what_changes_a_result_changes_its_key(changes, trains_again):
    base = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"sweep": {"ks": [2], "lambdas": [0.5]}}
    (train_before, eval_before), (train_after, eval_after) = _key_pair(base, {}), _key_pair(base, changes)
    assert eval_after != eval_before
    assert (train_after != train_before) is trains_again


@pytest.mark.parametrize(
    "key",
    [
        "train.k",
        "train.lambda",
        "train.seed",
        "train.layout",
        "train.loss",
        "data.format",
        "tokenize.max_length",
        "model.name_or_path",
    ],
)
def test_overrides_cannot_change_the_grid_or_the_upstream_stages(key):
    with pytest.raises(ConfigError, match=r"sweep\.overrides.*" + key.replace(".", r"\.")):
        config_from_dict({"sweep": {"overrides": {key: 1}}})
    assert config_from_dict({"sweep": {"overrides": {"train.epochs": 2, "eval.limit": 5}}})


def test_view_pairs_are_a_grid_axis_with_one_baseline():
    sweep = SweepConfig(ks=[2], lambdas=[0.5, 1.0], seeds=[0, 1], views=["steps", "user_assistant"], layout="packed")
    specs = expand_grid(sweep)
    assert [s.name for s in specs[:5]] == ["sft_s0", "k2_lam0.5_s0", "k2_lam1_s0", "ua_k2_lam0.5_s0", "ua_k2_lam1_s0"]
    assert len(specs) == 10 and sum(s.is_baseline for s in specs) == 2
    assert [s.views for s in specs[:5]] == ["steps", "steps", "steps", "user_assistant", "user_assistant"]
    ua = specs[3].as_dict()
    assert (ua["views"], ua["config_name"], ua["is_baseline"]) == ("user_assistant", "ua_k2_lam0.5", False)
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfgs = [resolve(base, s) for s in specs[:5]]
    assert [c.train.views for c in cfgs] == ["steps", "steps", "steps", "user_assistant", "user_assistant"]
    assert cfgs[1].train.layout == cfgs[3].train.layout == "packed"
    assert cache_key(cfgs[1], "d") != cache_key(cfgs[3], "d"), "same K and lambda, other view pair: another run"


def test_adding_a_view_pair_keeps_the_steps_runs_and_params_cannot_leak_into_them():
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["train"] |= {"views": "user_assistant", "layout": "packed"}  # the grid, not params, sets the pair
    keys = {}
    for views in (["steps"], ["steps", "user_assistant"]):
        sweep = SweepConfig(ks=[2], lambdas=[0.5], views=views, layout="packed")
        keys[len(views)] = {s.name: cache_key(resolve(base, s), "d") for s in expand_grid(sweep)}
        assert resolve(base, expand_grid(sweep)[1]).train.views == "steps"
    assert keys[2].items() >= keys[1].items() and set(keys[2]) - set(keys[1]) == {"ua_k2_lam0.5_s0"}


def test_the_view_pair_is_set_by_the_grid_and_needs_a_layout_without_inline_lm():
    with pytest.raises(ConfigError, match=r"sweep\.overrides.*train\.views"):
        config_from_dict({"sweep": {"overrides": {"train.views": "user_assistant"}}})
    with pytest.raises(ConfigError, match=r"sweep\.views.*sweep\.layout packed or two_pass"):
        config_from_dict({"sweep": {"views": ["user_assistant"]}})
    with pytest.raises(ConfigError, match=r"sweep\.views"):
        config_from_dict({"sweep": {"views": []}})


# --- A sweep's choices from its caller (the flow's `sweep` parameter) ---------------------


def test_the_choices_are_sweep_configs_fields_each_optional_with_its_types_and_docs():
    from typing import get_args

    from stepjepa.sweep.specs import SweepChoices, attribute_docs

    assert list(SweepChoices.model_fields) == list(SweepConfig.model_fields)
    assert SweepChoices().given() == {}
    schema = SweepChoices.model_json_schema()["properties"]
    for name in ("layout", "loss"):  # one home for the choices: SweepConfig's Literal
        (literal,) = [s for s in schema[name]["anyOf"] if "enum" in s]
        assert literal["enum"] == list(get_args(SweepConfig.model_fields[name].annotation))
    docs = attribute_docs(SweepConfig)
    assert schema["ks"]["description"].startswith(docs["ks"]) and "(default [1, 2, 3])" in schema["ks"]["description"]
    assert schema["layout"]["description"].startswith("How the two views are computed")  # train.layout's doc
    defaults = {name: value for name, value in SweepConfig().model_dump().items() if value is not None}
    assert SweepChoices(**defaults).given() == defaults


def test_choices_replace_the_files_values_and_a_bad_one_says_it_came_from_the_flow_run():
    from stepjepa.sweep.specs import SweepChoices, choose

    base = {"sweep": {"ks": [2], "lambdas": [0.5], "seeds": [3]}}
    assert choose(base, SweepChoices(ks=[1, 4]), "p.yaml") == SweepConfig(ks=[1, 4], lambdas=[0.5], seeds=[3])
    assert choose(base, SweepChoices(), "p.yaml") == SweepConfig(ks=[2], lambdas=[0.5], seeds=[3])
    # Constraints are SweepConfig's alone: the value passes the form and fails here, named.
    for bad, key in [
        ({"ks": [-1]}, r"sweep\.ks\.0"),
        ({"ks": []}, r"sweep\.ks"),
        ({"lambdas": [float("nan")]}, r"sweep\.lambdas\.0"),
        ({"overrides": {"train.k": 1}}, r"sweep\.overrides"),
    ]:
        choices = SweepChoices(**bad)
        with pytest.raises(ConfigError, match=rf"(?s)^p\.yaml with flow parameters {next(iter(bad))}=.*{key}"):
            choose(base, choices, "p.yaml")
    with pytest.raises(ConfigError, match=r"^p\.yaml: invalid"):
        choose({"sweep": {"ks": []}}, SweepChoices(), "p.yaml")


@pytest.mark.parametrize("bad", [{"ks": ["x"]}, {"layout": "sideways"}, {"views": ["steps", "other"]}, {"kss": [1]}])
def test_choices_of_the_wrong_type_or_name_are_rejected_by_the_model(bad):
    from pydantic import ValidationError

    from stepjepa.sweep.specs import SweepChoices

    with pytest.raises(ValidationError):
        SweepChoices(**bad)


# --- The flow's plumbing, without a Prefect run --------------------------------------------


def test_lanes_queue_each_run_behind_the_one_lanes_places_earlier():
    from pipelines.sweep import _in_lanes

    specs = [RunSpec(f"r{i}", 1, 0.5, 0, ()) for i in range(5)]
    waits = {}

    def submit(spec, after):  # (training future, evaluation future) of a run
        waits[spec.name] = after
        return f"train {spec.name}", f"evaluate {spec.name}"

    assert _in_lanes(specs, submit, 2)["r4"] == ("train r4", "evaluate r4")
    assert waits == {"r0": None, "r1": None, "r2": "evaluate r0", "r3": "evaluate r1", "r4": "evaluate r2"}


def test_the_tasks_hand_their_device_slots_on_and_prefect_hashes_none_of_their_inputs():
    from prefect.cache_policies import NO_CACHE

    from pipelines.sweep import evaluate_run, train_run

    assert train_run.cache_policy == NO_CACHE and evaluate_run.cache_policy == NO_CACHE


def test_a_work_pool_config_runs_in_the_sweeps_folder_without_leaving_this_one(tmp_path, monkeypatch):
    import os

    import pipelines.sweep as flow

    calls = {}

    class Task:
        def __init__(self, name):
            self.name = name

        def fn(self, *args, **kwargs):
            calls[self.name] = (args, kwargs)
            return {"run_dir": args[1], "run_id": "r"}

    monkeypatch.setattr(flow, "train_run", Task("train"))
    monkeypatch.setattr(flow, "evaluate_run", Task("evaluate"))
    paths = {"train_data": "data/tokenized/train.parquet", "tokenized": "data/tokenized", "prepared": "data/prepared"}
    here = os.getcwd()
    for workdir, root in [(tmp_path, tmp_path), (tmp_path / "elsewhere", Path(here))]:  # no such folder: this one
        flow.step_jepa_config.fn(
            spec={"name": "sft_s0"},
            run_dir="runs/sweep/sft_s0-ab",
            paths=paths,
            child_run_id="r",
            split="validation",
            eval_key="e",
            config={},
            workdir=str(workdir),
        )
        assert os.getcwd() == here
        (train_args, train_kwargs), (eval_args, eval_kwargs) = calls["train"], calls["evaluate"]
        assert train_args[1] == str(root / "runs/sweep/sft_s0-ab")
        assert train_args[2] == {name: str(root / path) for name, path in paths.items()} == eval_args[4]
        assert train_args[5:] == ("e", {}) and train_kwargs == eval_kwargs == {"cwd": str(root)}
        assert train_args[4] is eval_args[6], "one pool of device slots for the training and its evaluation"
    # A run another sweep's folder holds (runs/sweep, for a sweep in the store) is evaluated in this one's.
    flow.step_jepa_config.fn(
        spec={"name": "sft_s0"},
        run_dir="runs/sweep/sft_s0-ab",
        paths=paths,
        child_run_id="r",
        split="test",
        eval_key="e",
        config={},
        workdir=str(tmp_path),
        home="runs/store/sft_s0-ab",
    )
    assert calls["train"][0][1] == str(tmp_path / "runs/sweep/sft_s0-ab")
    assert calls["evaluate"][1] == {"cwd": str(tmp_path), "home": str(tmp_path / "runs/store/sft_s0-ab")}


# --- Axes: any training key, as a grid or one factor at a time ----------------------------


def test_the_default_grid_keeps_its_names_and_overrides():
    """Names and resolved configs of a sweep without axes are what they were before axes:
    every cached run folder and the committed dvc.lock stay valid."""
    sweep = SweepConfig(
        ks=[2], lambdas=[0.5], views=["steps", "user_assistant"], layout="packed", overrides={"train.max_steps": 7}
    )
    common = (
        ("train.layout", "packed"),
        ("train.loss", "cosine"),
        ("train.experiment", "step-jepa-sweep"),
        ("train.max_steps", 7),
    )
    assert expand_grid(sweep) == [
        RunSpec(
            "sft_s0",
            0,
            0.0,
            0,
            (("train.k", 0), ("train.lambda", 0.0), ("train.seed", 0), ("train.views", "steps"), *common),
            "steps",
        ),
        RunSpec(
            "k2_lam0.5_s0",
            2,
            0.5,
            0,
            (("train.k", 2), ("train.lambda", 0.5), ("train.seed", 0), ("train.views", "steps"), *common),
            "steps",
        ),
        RunSpec(
            "ua_k2_lam0.5_s0",
            2,
            0.5,
            0,
            (("train.k", 2), ("train.lambda", 0.5), ("train.seed", 0), ("train.views", "user_assistant"), *common),
            "user_assistant",
        ),
    ]


def test_axes_grid_names_each_value_that_differs_from_the_base():
    sweep = SweepConfig(
        ks=[1], lambdas=[0.1, 0.5], axes={"loss": ["infonce", "mse"], "target_grad": [True, False]}, layout="packed"
    )
    specs = expand_grid(sweep)
    assert [s.config_name for s in specs] == [
        "sft",
        "k1_lam0.1",
        "k1_lam0.1_target_grad-false",
        "k1_lam0.1_loss-mse",
        "k1_lam0.1_loss-mse_target_grad-false",
        "k1_lam0.5",
        "k1_lam0.5_target_grad-false",
        "k1_lam0.5_loss-mse",
        "k1_lam0.5_loss-mse_target_grad-false",
    ]
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    configs = {s.config_name: resolve(base, s).train for s in specs}
    assert (configs["sft"].loss, configs["sft"].target_grad) == ("infonce", True), "SFT at the base values"
    assert (
        configs["k1_lam0.5_loss-mse_target_grad-false"].loss,
        configs["k1_lam0.5_loss-mse_target_grad-false"].target_grad,
        configs["k1_lam0.5_loss-mse_target_grad-false"].lambda_,
    ) == ("mse", False, 0.5)
    assert all(s.factor is None for s in specs)
    assert (
        expand_grid(SweepConfig(ks=[1], lambdas=[0.1], axes={"learning_rate": [1e-3, "6e-3"]}))[2].name
        == "k1_lam0.1_learning_rate-0.006_s0"
    )


def test_one_at_a_time_varies_each_factor_alone_around_the_base():
    sweep = SweepConfig(
        ks=[1, 0, 2],
        lambdas=[0.1, 0.5],
        seeds=[0, 1],
        views=["steps", "user_assistant"],
        design="one_at_a_time",
        layout="packed",
        axes={"layout": ["packed", "two_pass"], "target_grad": [True, False], "gamma": [1.0, 0.5]},
    )
    specs = expand_grid(sweep)
    first = [(s.config_name, s.factor) for s in specs if s.seed == 0]
    assert first == [
        ("sft", None),
        ("k1_lam0.1", "base"),
        ("k0_lam0.1", "k"),
        ("k2_lam0.1", "k"),
        ("k1_lam0.5", "lambda"),
        ("ua_k1_lam0.1", "views"),
        ("k1_lam0.1_layout-two_pass", "layout"),
        ("k1_lam0.1_target_grad-false", "target_grad"),
        ("k1_lam0.1_gamma-0.5", "gamma"),
    ]
    assert len(specs) == 2 * len(first) and specs[len(first)].name == "sft_s1"
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    tc = {s.config_name: resolve(base, s).train for s in specs if s.seed == 1}
    assert (
        tc["k1_lam0.1_gamma-0.5"].gamma,
        tc["k1_lam0.1_gamma-0.5"].layout,
        tc["k1_lam0.1_gamma-0.5"].target_grad,
        tc["k1_lam0.1_gamma-0.5"].k,
        tc["k1_lam0.1_gamma-0.5"].seed,
    ) == (0.5, "packed", True, 1, 1)
    assert (tc["ua_k1_lam0.1"].views, tc["ua_k1_lam0.1"].layout) == ("user_assistant", "packed")
    assert tc["k1_lam0.1_layout-two_pass"].layout == "two_pass" and tc["k0_lam0.1"].k == 0


def test_an_axis_run_is_cached_as_the_same_config_set_another_way():
    """The cache key is the resolved config: a run an axis adds reuses the one trained by a sweep
    that set the same values without axes, and growing an axis keeps the runs already there."""
    base = yaml.safe_load((ROOT / "params.yaml").read_text())

    def keys(**sweep):
        return {
            s.name: cache_key(resolve(base, s), "d") for s in expand_grid(SweepConfig(ks=[1], lambdas=[0.1], **sweep))
        }

    plain = keys(loss="mse", layout="packed")
    axis = keys(axes={"loss": ["infonce", "mse"]}, layout="packed")
    assert axis["k1_lam0.1_loss-mse_s0"] == plain["k1_lam0.1_s0"]
    assert (
        axis["k1_lam0.1_s0"] != plain["k1_lam0.1_s0"] and axis["sft_s0"] != plain["sft_s0"]
    )  # loss infonce: another run
    grown = keys(axes={"loss": ["infonce", "mse", "cosine"]}, layout="packed")
    assert grown.items() >= axis.items() and set(grown) - set(axis) == {"k1_lam0.1_loss-cosine_s0"}
    assert keys(axes={"gamma": [1.0]})["k1_lam0.1_s0"] == keys()["k1_lam0.1_s0"], "a one-value axis at the default"


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"axes": {"los": ["mse"]}}, r"sweep\.axes\.los: train\.los is not a training key"),
        ({"axes": {"loss": ["l3"]}}, r"sweep\.axes\.loss: 'l3' is not a valid train\.loss"),
        ({"axes": {"gamma": [-1]}}, r"sweep\.axes\.gamma: -1 is not a valid train\.gamma"),
        ({"axes": {"learning_rate": [float("nan")]}}, r"sweep\.axes\.learning_rate: nan is not a valid"),
        ({"axes": {"loss": []}}, r"sweep\.axes\.loss"),
        ({"axes": {"loss": ["mse", "mse"]}}, r"sweep\.axes\.loss lists a value twice"),
        ({"axes": {"k": [1, 2]}}, r"sweep\.axes\.k: train\.k is set by sweep\.ks"),
        ({"axes": {"lambda": [1.0]}}, r"sweep\.axes\.lambda: train\.lambda is set by sweep\.lambdas"),
        ({"axes": {"seed": [1]}}, r"sweep\.axes\.seed: train\.seed is set by sweep\.seeds"),
        ({"axes": {"views": ["steps"]}}, r"sweep\.axes\.views: train\.views is set by sweep\.views"),
        ({"axes": {"log_every": [1, 5]}}, r"sweep\.axes\.log_every: train\.log_every changes no trained weight"),
        (
            {"axes": {"loss": ["mse"]}, "loss": "cosine"},
            r"sweep\.axes\.loss varies train\.loss.*sweep\.loss \(cosine\)",
        ),
        (
            {"axes": {"gamma": [0.5]}, "overrides": {"train.gamma": 1}},
            r"train\.gamma is both in sweep\.axes and in sweep\.overrides",
        ),
        (
            {"axes": {"layout": ["packed", "inline"]}, "views": ["steps", "user_assistant"]},
            r"sweep\.axes\.layout would train it inline",
        ),
        ({"design": "sideways"}, r"sweep\.design"),
        (
            {"design": "one_at_a_time", "ks": [0, 1], "lambdas": [0.0, 0.5]},
            r"the base config .* is K 0, lambda 0, which is SFT",
        ),
    ],
)
def test_bad_axes_are_rejected_naming_the_dotted_key(sweep, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"sweep": sweep})


def test_one_at_a_time_checks_only_the_view_pairs_and_layouts_it_trains():
    # user_assistant runs at the base layout (packed); inline runs with the base pair (steps).
    axes = {"layout": ["packed", "inline"]}
    config_from_dict({"sweep": {"axes": axes, "views": ["steps", "user_assistant"], "design": "one_at_a_time"}})
    with pytest.raises(ConfigError, match=r"user_assistant"):
        config_from_dict(
            {
                "sweep": {
                    "axes": {"layout": ["inline", "packed"]},
                    "views": ["steps", "user_assistant"],
                    "design": "one_at_a_time",
                }
            }
        )


def test_the_choices_form_has_the_axes_and_the_design_and_checks_them():
    from pydantic import ValidationError

    from stepjepa.sweep.specs import SweepChoices, choose

    schema = SweepChoices.model_json_schema()["properties"]
    assert {"axes", "design"} <= set(schema)
    (design,) = [s for s in schema["design"]["anyOf"] if "enum" in s]
    assert design["enum"] == ["grid", "one_at_a_time"] and "each factor varied alone" in schema["design"]["description"]
    assert "first value of each is the base" in " ".join(schema["axes"]["description"].split())
    with pytest.raises(ValidationError):
        SweepChoices(design="sideways")
    base = {"sweep": {"ks": [2], "lambdas": [0.5]}}
    chosen = choose(base, SweepChoices(axes={"loss": ["cosine", "mse"]}, design="one_at_a_time"), "p.yaml")
    assert [s.config_name for s in expand_grid(chosen)] == ["sft", "k2_lam0.5", "k2_lam0.5_loss-mse"]
    with pytest.raises(ConfigError, match=r"(?s)^p\.yaml with flow parameters axes=.*sweep\.axes\.loss: 'x' is not"):
        choose(base, SweepChoices(axes={"loss": ["x"]}), "p.yaml")


def test_dvc_yaml_reruns_the_sweep_when_any_sweep_field_changes():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["sweep"]
    params = set(stage["params"])
    uncovered = [
        f"sweep.{name}" for name in SweepConfig.model_fields if "sweep" not in params and f"sweep.{name}" not in params
    ]
    assert uncovered == [] and "train" in params


def test_dvc_set_params_and_the_config_read_axes_the_same_way(tmp_path):
    """`dvc exp run -S '++sweep.axes.loss=[...]'` (Hydra's grammar) writes what `load_config`
    reads for the same override, so a study's axes reach the flow as written."""
    from dvc.utils.hydra import apply_overrides

    from stepjepa.config import load_config

    sets = [
        "++sweep.axes.loss=[infonce,mse]",
        "++sweep.axes.target_grad=[true,false]",
        "++sweep.axes.learning_rate=[0.006,1e-3]",
        "++sweep.design=one_at_a_time",
        "sweep.loss=infonce",
    ]
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(params, sets)
    by_dvc = load_config(params).sweep
    assert by_dvc == load_config(ROOT / "params.yaml", [s.removeprefix("++") for s in sets]).sweep
    assert by_dvc.axes == {"loss": ["infonce", "mse"], "target_grad": [True, False], "learning_rate": [0.006, 0.001]}


def test_the_parent_run_name_says_the_axes_and_the_design():
    from pipelines.sweep import _sweep_name

    sweep = SweepConfig(
        ks=[1], lambdas=[0.1], axes={"loss": ["cosine", "mse"], "target_grad": [True, False]}, design="one_at_a_time"
    )
    assert _sweep_name(sweep) == (
        "sweep K=1 lambda=0.1 seeds=0 steps inline/cosine loss=cosine,mse target_grad=true,false one at a time"
    )
    assert _sweep_name(SweepConfig(ks=[1], lambdas=[0.1])) == "sweep K=1 lambda=0.1 seeds=0 steps inline/cosine"


def test_parent_run_names_tell_sweeps_apart_by_their_seeds_and_what_differs_from_the_params_file():
    """Issue 32: a seed-0 and a seed-1 sweep were both named `seeds=1` (the count)."""
    from pipelines.sweep import _sweep_name

    file = SweepConfig(ks=[1, 2], lambdas=[0.5], seeds=[0, 1])
    assert (
        _sweep_name(file, file, "conf/params.yaml")
        == "sweep K=1,2 lambda=0.5 seeds=0,1 steps inline/cosine (params.yaml)"
    )
    ui = file.model_copy(update={"ks": [1], "seeds": [1], "overrides": {"eval.limit": 200}, "promote": True})
    assert _sweep_name(ui, file) == (
        'sweep K=1 lambda=0.5 seeds=1 steps inline/cosine (params.yaml but ks, seeds, overrides={"eval.limit": 200}, '
        "promote=true)"
    )
    assert _sweep_name(ui, file) != _sweep_name(file.model_copy(update={"ks": [1], "seeds": [0]}), file)


def test_the_library_fingerprint_covers_every_stage_but_what_only_reports():
    from stepjepa.sweep import specs

    sources = {str(p.relative_to(specs.LIBRARY)) for p in specs.library_sources()}
    for stage in ("data", "method", "model", "evaluation", "training"):
        stage_files = {str(p.relative_to(specs.LIBRARY)) for p in (specs.LIBRARY / stage).glob("*.py")}
        assert stage_files and stage_files <= sources, stage
    assert {"config.py", "vocabulary.py", "data/arith.py", "method/forward.py", "sweep/specs.py"} <= sources
    assert {"sweep/runstore.py", "training/launch.py", "training/warm.py"} <= sources
    # Reporting only: a fix in a table, a figure or a statistic retrains nothing.
    assert not {s for s in sources if s.startswith("tracking/")}
    assert not {"stats.py", "sweep/report.py", "sweep/plots.py", "sweep/compare.py"} & sources


def _library_imports(path: Path) -> set[str]:
    """The `stepjepa` modules a source file imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("stepjepa"):
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("stepjepa")}
    return found


def test_no_module_a_run_executes_imports_what_the_fingerprint_leaves_out():
    """What the fingerprint leaves out must not be able to change a model or its answers: no
    module it covers imports one (a lazy import inside a function included). `tracking/` may:
    it is left out itself, and what it imports (`stats.reported`) only rounds what it logs."""
    from stepjepa.sweep import specs

    def module(rel: str) -> str:
        return "stepjepa." + rel.removesuffix(".py").replace("/", ".")

    left_out = [module(rel) for rel in specs.REPORT_ONLY if rel.endswith(".py")]
    assert left_out, specs.REPORT_ONLY
    leaks = {
        str(path.relative_to(specs.LIBRARY)): sorted(
            name for name in _library_imports(path) if any(name == m or name.startswith(m + ".") for m in left_out)
        )
        for path in specs.library_sources()
    }
    assert not {path: names for path, names in leaks.items() if names}, "a run would execute a module left out"
    # The check sees what it looks for: report.py imports stats, plots.py imports report.
    assert "stepjepa.stats" in _library_imports(specs.LIBRARY / "sweep/report.py")
    assert "stepjepa.sweep.report" in _library_imports(specs.LIBRARY / "sweep/plots.py")


def test_a_change_in_a_stage_module_changes_the_fingerprint(tmp_path, monkeypatch):
    from stepjepa.sweep import specs

    library = tmp_path / "stepjepa"
    for rel in ("config.py", "method/forward.py", "tracking/run.py", "sweep/report.py"):
        (library / rel).parent.mkdir(parents=True, exist_ok=True)
        (library / rel).write_text(f"# {rel}\n")
    monkeypatch.setattr(specs, "LIBRARY", library)
    data = tmp_path / "data.parquet"
    data.write_bytes(b"rows")
    before = specs.data_fingerprint([data])
    (library / "tracking/run.py").write_text("# a reporting fix\n")
    (library / "sweep/report.py").write_text("# a table fix\n")
    assert specs.data_fingerprint([data]) == before
    (library / "method/forward.py").write_text("# a method change\n")
    assert specs.data_fingerprint([data]) != before


# --- Evaluations: one folder per split and setting, the old layout still read -------------


def test_each_evaluation_setting_has_its_own_folder_and_the_old_layout_is_still_read(tmp_path):
    from stepjepa.sweep.specs import eval_folder, evaluation_key, is_evaluated, mark_evaluated

    run = tmp_path / "k1_lam0.5_s0-abcdef12"
    first, second = "1" * 32, "2" * 32
    assert eval_folder(run, "validation", first) == run / "eval" / "validation-11111111"
    for key in (first, second):
        assert not is_evaluated(run, "validation", key)
        eval_folder(run, "validation", key).mkdir(parents=True)
        mark_evaluated(run, "validation", key)
    assert is_evaluated(run, "validation", first) and is_evaluated(run, "validation", second)
    assert not is_evaluated(run, "test", first), "a split is its own evaluation"
    # A run folder from before (on disk, in a DVC cache): eval/<split>/ with its marker.
    old = tmp_path / "sft_s0-12345678"
    (old / "eval" / "test").mkdir(parents=True)
    (old / "eval" / "test" / "eval_key").write_text(first + "\n")
    assert is_evaluated(old, "test", first) and eval_folder(old, "test", first) == old / "eval" / "test"
    assert evaluation_key(old / "eval" / "test") == first
    assert not is_evaluated(old, "test", second)
    assert eval_folder(old, "test", second) == old / "eval" / "test-22222222", "another setting beside it"


# --- Train keys the sweep replaces: one warning each, naming the sweep key ---------------


def _replaced(train: dict, sweep: dict | None = None) -> list[str]:
    from stepjepa.sweep.specs import replaced_settings

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    base["train"] |= train
    base["sweep"] |= sweep or {}
    config = config_from_dict(base).sweep
    return replaced_settings(base, config, expand_grid(config), "params.yaml")


def test_the_shipped_params_file_spells_out_defaults_and_warns_of_nothing():
    assert _replaced({}) == []


@pytest.mark.parametrize(
    ("train", "sweep_key"),
    [
        ({"k": 1}, "sweep.ks"),
        ({"lambda": 0.5}, "sweep.lambdas"),
        ({"seed": 3}, "sweep.seeds"),
        ({"loss": "mse"}, "sweep.loss"),
        ({"layout": "two_pass"}, "sweep.layout"),
        ({"views": "user_assistant", "layout": "packed"}, "sweep.views"),
        ({"experiment": "mine"}, "sweep.experiment"),
    ],
)
def test_a_train_key_the_sweep_replaces_is_one_line_naming_the_sweep_key(train, sweep_key):
    key = next(iter(train))
    lines = [line for line in _replaced(train) if line.startswith(f"train.{key}:")]
    assert len(lines) == 1, _replaced(train)
    assert "params.yaml" in lines[0] and f"set {sweep_key} instead" in lines[0] and "\n" not in lines[0]


def test_no_warning_when_every_run_gets_the_value_or_an_axis_names_its_own_key():
    assert _replaced({"k": 1}, {"ks": [1]}) == [], "SFT's K = 0 is not a replaced value"
    assert _replaced({"seed": 3, "loss": "mse"}, {"seeds": [3], "loss": "mse"}) == []
    (line,) = _replaced({"loss": "mse"}, {"axes": {"loss": ["cosine", "infonce"]}})
    assert line.startswith('train.loss: "mse"') and "set sweep.axes.loss instead" in line
    (line,) = _replaced({"target_grad": False}, {"axes": {"target_grad": [True]}})
    assert "sweep.axes.target_grad" in line
    assert _replaced({"max_steps": 3, "learning_rate": 0.5}) == [], "keys the sweep leaves alone are the runs'"
