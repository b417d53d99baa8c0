"""The model to evaluate: a local directory for a path, an MLflow URI or a hub id, then the
model and its tokenizer loaded from it (checked for the chat template training used)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from stepjepa import tracking
from stepjepa.config import Config
from stepjepa.inputs import InputError
from stepjepa.model_location import HUB_ID

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# What `--model` names in an MLflow store rather than on disk or on the hub.
MODEL_URI_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")

# What evaluation needs from a hub repository: weights as safetensors, never pickles.
HUB_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def resolve_model_dir(model: str, tracking_uri: str | None = None, revision: str | None = None) -> Path:
    """A local Hugging Face model directory for a path, an MLflow URI or a hub id (downloaded).

    An MLflow artifact folder may hold the model one level down (`model/`), as the
    transformers flavour writes it; the folder with `config.json` is returned. A hub id
    comes from the Hugging Face cache, or from the hub when `HF_HUB_OFFLINE=0`.
    """
    if model.startswith(MODEL_URI_SCHEMES):
        try:
            path = tracking.download(model, tracking_uri)
        except Exception as err:  # mlflow raises several types for unknown names/runs/aliases
            raise InputError(f"--model {model}: cannot download from MLflow ({tracking.one_line(err)})") from None
    elif not Path(model).exists() and HUB_ID.fullmatch(model):
        path = _hub_snapshot(model, revision)
    else:
        path = Path(model)
        if not path.is_dir():
            raise InputError(f"--model {model}: no such model directory")
    candidates = [path, *sorted(p.parent for p in path.glob("*/config.json"))]
    found = next((c for c in candidates if (c / "config.json").is_file()), None)
    if found is None:
        raise InputError(f"--model {model}: {path} has no config.json (not a Hugging Face model directory)")
    return found


def _hub_snapshot(model: str, revision: str | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=HUB_FILES))
    except LocalEntryNotFoundError:
        hint = "HF_HUB_OFFLINE=1: set HF_HUB_OFFLINE=0 to download it" if constants.HF_HUB_OFFLINE else "offline?"
        raise InputError(
            f"--model {model}: no such model directory, and not in the Hugging Face cache ({hint})"
        ) from None
    except (RepositoryNotFoundError, HfHubHTTPError) as err:
        raise InputError(f"--model {model}: no such model directory or hub model ({err})") from None


def load_model(model_dir: Path, cfg: Config, device: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Tokenizer (checked for a chat template first, before the slow model load) and model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_dir = next((d for d in [model_dir, model_dir.parent / "components" / "tokenizer"]
                          if (d / "tokenizer_config.json").is_file()), model_dir)  # fmt: skip
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as err:
        raise InputError(f"{tokenizer_dir}: cannot load the tokenizer ({err})") from None
    if not tokenizer.chat_template:
        raise InputError(
            f"{tokenizer_dir}: the tokenizer has no chat template; evaluation prompts through the "
            "template used in training (a base model needs one set, e.g. stepjepa.prompts.CHATML_TEMPLATE)"
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise InputError("eval.device is cuda, but torch sees no CUDA device")
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, cfg.model.dtype), trust_remote_code=cfg.model.trust_remote_code
    )
    return model.to(device), tokenizer
