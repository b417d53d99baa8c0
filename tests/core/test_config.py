"""The typed config: shipped files parse, bad values name their key."""

from pathlib import Path

import pytest
import yaml

from stepjepa.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_params_parse():
    cfg = load_config(ROOT / "params.yaml")
    assert isinstance(cfg, Config)
    assert cfg.model.trust_remote_code is False


def test_every_dvc_param_key_exists_in_the_config():
    """dvc.yaml lists params by dotted key; each must be a real, typed key."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    cfg = load_config(ROOT / "params.yaml").model_dump()
    for name, stage in stages.items():
        for key in stage.get("params", []):
            node = cfg
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"stage {name}: unknown param {key}"
                node = node[part]


@pytest.mark.parametrize(
    "override, key",
    [
        ("data.format=csv", "data.format"),
        ("data.colour=red", "data.colour"),
        ("tokenize.max_length=4", "tokenize.max_length"),
        ("tiny_model.hidden_size=102", "tiny_model.hidden_size"),
        ("data.answer_template=no placeholder", "data.answer_template"),
        ("nosuchsection.x=1", "nosuchsection"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "params.yaml", [override])


def test_a_bad_override_is_named_as_one(tmp_path):
    with pytest.raises(ConfigError, match=r"params\.yaml with --set train\.k=-1: invalid configuration"):
        load_config(ROOT / "params.yaml", ["train.k=-1"])


def test_override_is_parsed_as_yaml():
    cfg = load_config(ROOT / "params.yaml", ["tokenize.max_length=256", "data.keep_annotations=true"])
    assert cfg.tokenize.max_length == 256 and cfg.data.keep_annotations is True


def test_errors_for_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(ROOT / "params.yaml", ["train.k"])
    with pytest.raises(ConfigError, match="a folder, not a params file"):
        load_config(tmp_path)
    binary = tmp_path / "model.safetensors"
    binary.write_bytes(b"\x80\xff\x00binary")
    with pytest.raises(ConfigError, match="model.safetensors: not a UTF-8 text file"):
        load_config(binary)


def test_commented_defaults_in_params_yaml_are_the_real_defaults():
    """params.yaml lists the keys it leaves out as comments; they must not drift from config.py."""
    import re

    from stepjepa.config import Config

    section, checked = None, 0
    for line in (ROOT / "params.yaml").read_text().splitlines():
        if re.match(r"^\w+:", line):
            section = line.split(":")[0]
        found = re.match(r"^  # (\w+): (.+?)(\s+#.*)?$", line)
        if found and section:
            field = Config.model_fields[section].annotation.model_fields[found[1]]
            default = field.default
            assert yaml.safe_load(found[2]) == (list(default) if isinstance(default, tuple) else default), line
            checked += 1
    assert checked >= 10


def test_the_weight_neutral_keys_are_real_keys_and_one_list():
    """One list says which keys leave the trained weights alone; resuming, MLflow params and
    the sweep's cache key all read it, so a typo here would silently retrain (or not).
    (What a resume may change: test_train.py; the cache key: test_sweep_grid.py.)"""
    from stepjepa.config import WEIGHT_NEUTRAL_KEYS, flatten, resolved_tree, split_params

    keys = flatten(resolved_tree(Config()))
    assert WEIGHT_NEUTRAL_KEYS <= keys.keys(), sorted(WEIGHT_NEUTRAL_KEYS - keys.keys())
    params, tags = split_params(resolved_tree(Config()))
    assert WEIGHT_NEUTRAL_KEYS <= tags.keys() and not WEIGHT_NEUTRAL_KEYS & params.keys()
    assert {"train.k", "train.lambda", "train.learning_rate", "model.name_or_path"} <= params.keys()
