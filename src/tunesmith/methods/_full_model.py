"""What the methods that change base weights share: they ship a whole model dir.

The dir is what `save_pretrained` writes (config.json, generation_config.json,
model.safetensors), so transformers, vLLM and llama.cpp's converter read it
without tunesmith.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods.base import MethodError


def require_full_model(model: nn.Module, action: str) -> PreTrainedModel:
    if not isinstance(model, PreTrainedModel):
        raise MethodError(f"expected a transformers model to {action}, got {type(model).__name__}.")
    return model


def save_full_model(model: nn.Module, out_dir: Path) -> None:
    """Write the whole model as safetensors (transformers writes no pickle files)."""
    require_full_model(model, "save").save_pretrained(out_dir)


def load_full_model(base: PreTrainedModel, artifact_dir: Path) -> PreTrainedModel:
    """Read a saved model dir in the class, dtype and device of `base`.

    Every weight comes from the artifact, so `base` only lends its class and
    placement; loading through `from_pretrained` handles sharded files and tied
    embeddings the way every other reader of the dir will.
    """
    model = type(base).from_pretrained(artifact_dir, dtype=base.dtype, use_safetensors=True)
    return model.to(base.device).eval()
