"""Base models: the bundled default, local Hugging Face dirs, and how they are loaded."""

from tunesmith.models.loading import (
    LoadedModel,
    ModelError,
    enable_gradient_checkpointing,
    load_base_model,
    pick_device,
    pick_dtype,
)

__all__ = [
    "LoadedModel",
    "ModelError",
    "enable_gradient_checkpointing",
    "load_base_model",
    "pick_device",
    "pick_dtype",
]
