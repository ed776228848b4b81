"""Load a base model and its tokenizer, on the right device and in the right precision."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tunesmith.errors import TunesmithError
from tunesmith.models.autocast_paths import compute_dtype_paths
from tunesmith.models.bundled import BUNDLED_MODELS, BundledModelMissing, ensure_converted


class ModelError(TunesmithError):
    """A model that cannot be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            "train.device is 'cuda' but no CUDA device is visible. Use 'auto' or 'cpu'."
        )
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_model_path(name: str, cache_dir: Path | None = None) -> Path:
    if name in BUNDLED_MODELS:
        try:
            return ensure_converted(name, cache_dir)
        except BundledModelMissing as error:
            raise ModelError(str(error)) from None
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    known = ", ".join(sorted(BUNDLED_MODELS))
    raise ModelError(
        f"model.name {name!r} is neither a bundled model ({known}) nor a local Hugging Face model "
        "directory with a config.json. tunesmith works offline: download the model once "
        "(e.g. `huggingface-cli download ORG/NAME --local-dir DIR`) and pass DIR."
    )


def load_base_model(
    name: str,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    **from_pretrained_options: object,
) -> LoadedModel:
    """Load weights from safetensors only; never runs model code unless asked.

    `from_pretrained_options` come from the method (e.g. a 4-bit quantization config),
    in which case the weights are placed by the quantizer, not moved afterwards.
    """
    path = resolve_model_path(name, cache_dir)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, object] = {"dtype": dtype, "use_safetensors": True, **from_pretrained_options}
    model = AutoModelForCausalLM.from_pretrained(
        path, trust_remote_code=trust_remote_code, **kwargs
    )
    if device is not None and "quantization_config" not in from_pretrained_options:
        model.to(device)
    compute_dtype_paths(model)
    return LoadedModel(model=model, tokenizer=tokenizer, path=path)


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Keep only each decoder layer's input and recompute the rest during backward: roughly
    one more forward pass per step for activation memory that no longer grows with depth.

    Non-reentrant checkpointing: a frozen embedding (LoRA and kin) needs no input-grad hook,
    and dropout masks are replayed exactly, so the gradients equal those without it.
    """
    options = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)  # the newer name
    if enable is None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        enable(activation_checkpointing_kwargs=options)
