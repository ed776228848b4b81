"""What the peft-backed methods share: save as a peft adapter dir, reload, merge."""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods.base import MethodError


def require_peft_model(model: nn.Module, action: str) -> PeftModel:
    """The model a peft method attached, or a MethodError naming what was passed instead."""
    if not isinstance(model, PeftModel):
        raise MethodError(f"expected a peft model to {action}, got {type(model).__name__}.")
    return model


def save_adapter(model: nn.Module, out_dir: Path) -> None:
    """Write `adapter_config.json` + `adapter_model.safetensors`, loadable by peft alone."""
    require_peft_model(model, "save").save_pretrained(out_dir, safe_serialization=True)


def load_adapter(base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
    return PeftModel.from_pretrained(base, artifact_dir, is_trainable=False)


def merge_adapter(model: nn.Module) -> PreTrainedModel:
    return require_peft_model(model, "merge").merge_and_unload()
