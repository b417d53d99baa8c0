"""Load the model to fine-tune, add the predictor tokens, wrap it for LoRA, save it back.

The saved model is a plain Hugging Face directory (safetensors weights, LoRA merged, the
tokenizer with its predictor tokens), loadable by `AutoModelForCausalLM` with no PEFT and
no project code.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from stepjepa.config import ConfigError, ModelConfig, TrainConfig
from stepjepa.data import tokenization
from stepjepa.model_location import not_loadable
from stepjepa.prompts import predictor_tokens

log = logging.getLogger(__name__)


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """`stepjepa.data.tokenization.load_tokenizer` for `cfg`, with a one-line error naming the param."""
    try:
        return tokenization.load_tokenizer(cfg.name_or_path, cfg.revision, cfg.trust_remote_code)
    except OSError as err:
        raise not_loadable(cfg, err) from None


def check_attention_device(cfg: ModelConfig, device: torch.device | str) -> None:
    """Refuse `flex_attention` for training off CUDA, in one line naming the key: torch runs
    FlexAttention's forward on the CPU but has no backward there (stack-notes.md)."""
    device = torch.device(device)
    if cfg.attn_implementation == "flex_attention" and device.type != "cuda":
        raise ConfigError(
            f"model.attn_implementation=flex_attention trains on CUDA only (torch has no FlexAttention "
            f"backward on {device.type}); set model.attn_implementation=sdpa to train on this machine"
        )


def load_model(cfg: ModelConfig) -> PreTrainedModel:
    """The causal LM named by `cfg`, in `cfg.dtype`, with the KV cache off (training)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path,
            revision=cfg.revision,
            trust_remote_code=cfg.trust_remote_code,
            dtype=getattr(torch, cfg.dtype),
            attn_implementation=cfg.attn_implementation,
        )
    except OSError as err:
        raise not_loadable(cfg, err) from None
    model.config.use_cache = False  # transformers 5 builds a cache even in train mode otherwise
    return model


def add_predictor_tokens(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, k: int) -> list[int]:
    """Add `<|predictor_1..K|>` as special tokens and give them embedding rows.

    Returns their ids. Newly added tokens start at the mean embedding of the tokenizer's
    existing tokens (input and, if untied, output): deterministic, so a resumed run
    rebuilds exactly the same frozen base rows, and on the scale of real tokens. That
    holds also when the matrix already has spare rows beyond the tokenizer (Qwen pads its
    vocabulary to a multiple of 128) and no resize happens. Tokens already present (a
    model saved by this pipeline) are reused with their trained rows. The matrix is never
    shrunk.
    """
    tokens = predictor_tokens(k)
    if not tokens:
        return []
    known = len(tokenizer)
    tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    _init_rows(model, [i for i in ids if i >= known], reference_rows=known)
    return list(ids)


@torch.no_grad()
def _init_rows(model: PreTrainedModel, rows: list[int], reference_rows: int) -> None:
    """Set `rows` of the input (and untied output) embedding to the mean of the first `reference_rows`."""
    if not rows:
        return
    embeddings = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight is not embeddings[0]:
        embeddings.append(output.weight)
    for weight in embeddings:
        weight[rows] = weight[:reference_rows].mean(dim=0, keepdim=True)


def apply_lora(model: PreTrainedModel, cfg: TrainConfig, new_token_ids: list[int]) -> torch.nn.Module:
    """Wrap `model` with LoRA adapters; the predictor-token rows train too.

    `trainable_token_indices` trains just those rows of the embedding (and of a tied LM
    head) instead of the whole matrix. The reference left them at their random initial
    values under LoRA, so its predictors never learned anything.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.lora_target_modules),
        trainable_token_indices=new_token_ids or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute layer activations in backward (non-reentrant: works with 4D masks and LoRA)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if hasattr(model, "get_base_model"):
        # Frozen embeddings give inputs without grad; checkpointed blocks then need this.
        base.enable_input_require_grads()


def build_model(
    model_cfg: ModelConfig, train_cfg: TrainConfig
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, list[int]]:
    """Model (LoRA-wrapped if asked), tokenizer with predictor tokens, and their ids."""
    tokenizer = load_tokenizer(model_cfg)
    model = load_model(model_cfg)
    ids = add_predictor_tokens(model, tokenizer, train_cfg.k)
    if train_cfg.finetune == "lora":
        model = apply_lora(model, train_cfg, ids)
    if train_cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    log.info("model %s: %d of %d parameters train (%s)", model_cfg.name_or_path, trainable, total, train_cfg.finetune)
    return model, tokenizer, ids


def merged_model(model: torch.nn.Module) -> PreTrainedModel:
    """A plain transformers model: LoRA (and trainable token rows) merged into the weights."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if getattr(model, "is_activation_checkpointing", False):
        model.activation_checkpointing_disable()
    model.config.use_cache = True  # for generation by whoever loads the saved model
    return model


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path) -> Path:
    """Save a (merged) model and its tokenizer as an HF directory with safetensors.

    Written to a hidden sibling folder and renamed into place, so a failure (a full disk)
    leaves no partial `out_dir` that would pass for a model; it raises `OSError` naming
    the path and the reason.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)  # leftovers of a process killed while saving
    try:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)
        tmp.rename(out_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception) and not isinstance(err, OSError):  # safetensors' writer raises its own type
            raise OSError(None, f"could not save the model ({err})", str(out_dir)) from err
        raise
    return out_dir
