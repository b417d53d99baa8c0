"""The typed configuration of every stage, read from `params.yaml`.

One section per job (`data`, `tiny_model`, `model`, `tokenize`, `train`, `eval`). Unknown
keys and bad values are errors that name the dotted key, so a typo in a sweep override
fails before any work starts instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stepjepa.prompts import DEFAULT_ANSWER_TEMPLATE, DEFAULT_SYSTEM_PROMPT


class ConfigError(ValueError):
    """A params file or override that does not validate; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DataConfig(Section):
    """Where GSM8K comes from and how a solution becomes steps and messages."""

    hub_dataset: str = "openai/gsm8k"
    """Hub dataset id, used unless the environment variable GSM8K_DIR names a folder."""
    hub_config: str = "main"
    hub_revision: str | None = None
    """Pin a hub revision (commit sha) so the data cannot change under a run."""
    format: Literal["gsm8k", "deepseek"] = "gsm8k"
    """`gsm8k`: one step per line before `####`; `deepseek`: `**Step N:**` markers."""
    keep_annotations: bool = False
    """Keep calculator annotations such as `<<48/2=24>>` in the step text."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    answer_template: str = DEFAULT_ANSWER_TEMPLATE
    """Final segment of the assistant message; `{answer}` is the gold answer."""
    short_records: Literal["keep", "drop"] = "keep"
    """Records with fewer than 2 steps: `keep` for LM-only training, or `drop`. Counted either way."""

    @model_validator(mode="after")
    def _template_has_answer(self) -> DataConfig:
        if "{answer}" not in self.answer_template:
            raise ValueError("data.answer_template must contain the placeholder {answer}")
        return self


class TinyModelConfig(Section):
    """The embedded default model: a tiny Llama plus a BPE tokenizer trained on GSM8K."""

    vocab_size: int = Field(4096, ge=512, le=65536)
    hidden_size: int = Field(192, ge=16)
    intermediate_size: int = Field(512, ge=16)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    num_key_value_heads: int = Field(2, ge=1)
    max_position_embeddings: int = Field(1024, ge=64)
    tie_word_embeddings: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("tiny_model.hidden_size must be divisible by tiny_model.num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                "tiny_model.num_attention_heads must be divisible by tiny_model.num_key_value_heads"
            )
        return self


class ModelConfig(Section):
    """Which causal LM to fine-tune: a Hugging Face hub id or a local directory."""

    name_or_path: str = "models/tiny"
    """`models/tiny` is the embedded model the `build_model` stage writes; any HF id works."""
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


class TokenizeConfig(Section):
    """How conversations become token ids, labels and step spans."""

    max_length: int = Field(512, ge=16)
    """Longer conversations are truncated; one cut inside Step 2 has no JEPA pair."""
    date_string: str = "26 Jul 2024"
    """Pinned date for chat templates that print today's date (Llama-3), so tokenised
    data does not change from day to day."""


class Config(Section):
    data: DataConfig = DataConfig()
    tiny_model: TinyModelConfig = TinyModelConfig()
    model: ModelConfig = ModelConfig()
    tokenize: TokenizeConfig = TokenizeConfig()


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`train.k=2` -> ("train.k", 2); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. train.k=2")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def config_from_dict(tree: dict[str, Any], source: str = "params") -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read and validate a params file; `overrides` are `dotted.key=value` strings."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    return config_from_dict(tree, str(path))
