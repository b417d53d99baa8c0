"""The typed configuration of every stage, read from `params.yaml`.

One section per job (`data`, `tiny_model`, `model`, `tokenize`, `train`, `eval`). Unknown
keys and bad values are errors that name the dotted key, so a typo in a sweep override
fails before any work starts instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stepjepa.prompts import DEFAULT_ANSWER_TEMPLATE, DEFAULT_SYSTEM_PROMPT


class ConfigError(ValueError):
    """A params file or override that does not validate; the message names the key."""


class Section(BaseModel):
    # allow_inf_nan=False: `train.lambda: .inf` or `nan` in YAML is a typo, never a weight.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)


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
    on_bad_record: Literal["skip", "error"] = "skip"
    """A malformed or incomplete record: a counted skip naming file, line and field, or an error."""
    validation_size: int = Field(500, ge=1)
    """Training records held out as the validation split (chosen by a hash of the record id);
    the sweep selects its champion on them, never on test."""

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


# The original LLM-JEPA pair isolates the whole assistant turn (method doc section 8).
INLINE_UA = ("train.views=user_assistant needs train.layout packed or two_pass, not inline: its assistant "
             "is isolated from the question, which the LM loss cannot be trained without")


class TrainConfig(Section):
    """One training run: the Step-JEPA objective, what is trained, and the optimiser."""

    k: int = Field(2, ge=0)
    """Predictor tokens inserted after Step 1; 0 aligns the Step-1 end token directly."""
    lambda_: float = Field(0.1, ge=0, alias="lambda")
    """Weight of the JEPA loss; 0 with k = 0 is plain supervised fine-tuning."""
    gamma: float = Field(1.0, ge=0)
    """Weight of the language-model loss."""
    loss: Literal["cosine", "l2", "mse", "infonce"] = "cosine"
    """How view 1 is aligned with view 2 (method doc section 4)."""
    temperature: float = Field(0.07, gt=0)
    """InfoNCE temperature (used only by `loss: infonce`)."""
    jepa_ratio: float = Field(1.0, le=1)
    """Probability that a batch applies the JEPA loss; <= 0 means every batch."""
    layout: Literal["inline", "two_pass", "packed"] = "inline"
    """How the two views are computed (method doc section 5)."""
    views: Literal["steps", "user_assistant"] = "steps"
    """The JEPA view pair: `steps` (Step 1 -> Step 2, Step-JEPA) or `user_assistant` (the
    user turn -> the assistant turn, the original LLM-JEPA; layout packed or two_pass)."""
    target_grad: bool = True
    """Back-propagate the JEPA loss into view 2 too (the paper's code). false detaches the
    target, as latent-prediction work such as NextLat does: a co-trained target can
    collapse towards the predictor and make the JEPA loss trivially small."""
    finetune: Literal["full", "lora"] = "full"
    """Train every weight, or LoRA adapters plus the predictor-token embeddings."""
    lora_r: int = Field(16, ge=1)
    """LoRA rank."""
    lora_alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    """Module names that receive LoRA adapters (Llama/Qwen names by default)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision: bf16 runs the forward pass under autocast."""
    learning_rate: float = Field(5e-5, gt=0)
    """Peak learning rate after warmup."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay, not applied to biases, norms or embeddings."""
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    """Warmup as a fraction of the optimizer steps."""
    warmup_steps: int | None = Field(None, ge=0)
    """Warmup in optimizer steps; when set it replaces `warmup_ratio`."""
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this; null disables clipping (the norm is still logged)."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch per process."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    epochs: int = Field(1, ge=1)
    """Passes over the training data."""
    max_steps: int | None = Field(None, ge=1)
    """Stop after this many optimizer steps, if that comes before the end of `epochs`."""
    max_examples: int | None = Field(None, ge=1)
    """Train on the first N rows only (quick runs)."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    seed: int = 0
    """Seeds data order, JEPA-ratio draws, dropout and new-token initialisation."""
    checkpoint_every: int | None = Field(500, ge=1)
    """Save a resumable checkpoint every N optimizer steps; null saves none."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the latest checkpoints to keep."""
    log_every: int = Field(10, ge=1)
    """Log metrics every N optimizer steps."""
    eval_every: int | None = Field(None, ge=1)
    """Held-out NLL (all answer tokens, and Step 2) of `eval_examples` validation rows every N
    steps and at the last step (`stepjepa train --val-data`); a multiple of `log_every`."""
    eval_examples: int = Field(64, ge=1)
    """The first N validation rows the in-training held-out NLL uses (a fixed subset)."""
    tracking: Literal["mlflow", "none"] = "mlflow"
    """Where metrics go: MLflow (MLFLOW_TRACKING_URI, default sqlite in the project root) or nowhere."""
    experiment: str = Field("step-jepa", min_length=1)
    """MLflow experiment name."""
    log_model: bool = True
    """Log the final model to MLflow so the registry can take it (a copy of the weights)."""

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.loss == "infonce" and self.lambda_ > 0 and self.batch_size < 2:
            raise ValueError("train.batch_size must be >= 2 for train.loss=infonce (in-batch negatives)")
        if self.warmup_steps is not None and self.warmup_ratio > 0:
            raise ValueError("set train.warmup_steps or train.warmup_ratio, not both")
        if self.eval_every is not None and self.eval_every % self.log_every:
            raise ValueError(f"train.eval_every ({self.eval_every}) must be a multiple of train.log_every "
                             f"({self.log_every}): held-out metrics are logged with a logging step")
        if self.views == "user_assistant" and self.layout == "inline":
            raise ValueError(INLINE_UA)
        return self



# Set per run by the sweep's grid fields, so `sweep.overrides` may not set them.
GRID_KEYS = ("train.k", "train.lambda", "train.seed", "train.layout", "train.loss", "train.views")


class SweepConfig(Section):
    """A K x lambda grid; every seed also gets the SFT baseline (K = 0, lambda = 0)."""

    ks: list[Annotated[int, Field(ge=0)]] = Field([1, 2, 3], min_length=1)
    """Predictor-token counts to try."""
    lambdas: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field([0.1, 0.5, 2.0], min_length=1)
    """JEPA loss weights to try."""
    seeds: list[int] = Field([0], min_length=1)
    """Each config (and the baseline) is trained once per seed."""
    layout: Literal["inline", "two_pass", "packed"] = "inline"
    loss: Literal["cosine", "l2", "mse", "infonce"] = "cosine"
    views: list[Literal["steps", "user_assistant"]] = Field(["steps"], min_length=1)
    """View pairs to try (`train.views`); one sweep can hold SFT, LLM-JEPA and Step-JEPA."""
    overrides: dict[str, Any] = {}
    """Extra `train.*` / `eval.*` values for every run, by dotted key (not the grid's own
    `train.k`, `train.lambda`, `train.seed`, `train.layout`, `train.loss`, `train.views`)."""
    max_concurrent: int | None = Field(None, ge=1)
    """Training runs at once; null = 1 on CPU, one per visible GPU."""
    retries: int = Field(0, ge=0)
    """Prefect retries of a failed training run."""
    registered_model_name: str = Field("step-jepa-gsm8k", min_length=1)
    """MLflow registry name the best config's model is registered under (alias `champion`)."""
    experiment: str = Field("step-jepa-sweep", min_length=1)
    """MLflow experiment of the sweep's parent and child runs."""
    launcher: Literal["local", "work_pool"] = "local"
    """`local`: each config is a task of the sweep's own process; `work_pool`: each config
    is a flow run of `config_deployment` on a Prefect work pool (a cluster)."""
    config_deployment: str = "step-jepa-config/default"
    """The per-config deployment the `work_pool` launcher runs (`pipelines.sweep --deploy`)."""

    @field_validator("overrides")
    @classmethod
    def _overrides_change_runs_only(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        # Data and tokenisation are DVC stages upstream of the sweep: an override there would
        # be logged as if applied while every run trains on the same tokenised file.
        for key in overrides:
            if key in GRID_KEYS:
                raise ValueError(
                    f"{key} is set by the grid (sweep.ks, lambdas, seeds, layout, loss, views), not an override"
                )
            if not key.startswith(("train.", "eval.")):
                raise ValueError(f"{key}: only train.* and eval.* keys can be overridden per run")
        return overrides

    @model_validator(mode="after")
    def _views_fit_layout(self) -> SweepConfig:
        if "user_assistant" in self.views and self.layout == "inline":
            raise ValueError(
                "sweep.views holds user_assistant, which needs sweep.layout packed or two_pass, not inline"
            )
        return self


class EvalConfig(Section):
    """GSM8K evaluation (`stepjepa evaluate`): which examples, how answers are generated.

    Decoding is greedy; the model's dtype and `trust_remote_code` come from `model`.
    """

    split: Literal["test", "validation", "train"] = "test"
    """Prepared split `stepjepa evaluate` reads, `data/prepared/{split}.jsonl`, unless `--data`
    names a file. A sweep ignores it: it selects on `validation` and reads `test` once."""
    limit: int | None = Field(None, ge=1)
    """Evaluate the first N examples only; null evaluates them all."""
    batch_size: int = Field(32, ge=1)
    """Prompts generated together (left-padded); changes speed, never the completions."""
    max_new_tokens: int = Field(512, ge=1)
    """Longest completion; those that reach it are counted in `hit_max_new_tokens`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: cuda when available, else cpu."""


class Config(Section):
    data: DataConfig = DataConfig()
    tiny_model: TinyModelConfig = TinyModelConfig()
    model: ModelConfig = ModelConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    eval: EvalConfig = EvalConfig()


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
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


def resolved_tree(cfg: Config) -> dict[str, Any]:
    """Every key with its value, defaults included: what a run's `config.yaml` holds."""
    return cfg.model_dump(mode="json", by_alias=True)


def write_config(cfg: Config, path: str | Path) -> Path:
    """The resolved config as a params file (`stepjepa train/evaluate --params` read it back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(resolved_tree(cfg), sort_keys=False), encoding="utf-8")
    return path


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Read and validate a params file; `overrides` are `dotted.key=value` strings."""
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a params file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the params file ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for text in overrides or []:
        set_dotted(tree, *parse_override(text))
    # An invalid value may come from the command line: say so, not only the file.
    source = f"{path} with --set {' '.join(overrides)}" if overrides else str(path)
    return config_from_dict(tree, source)
