"""Base models: the bundled default, local Hugging Face dirs, and how they are loaded."""

from tunesmith.models.loading import (
    LoadedModel,
    ModelError,
    enable_gradient_checkpointing,
    load_base_model,
    pick_device,
)
from tunesmith.models.precision import Precision, PrecisionError, resolve_precision

__all__ = [
    "LoadedModel",
    "ModelError",
    "Precision",
    "PrecisionError",
    "enable_gradient_checkpointing",
    "load_base_model",
    "pick_device",
    "resolve_precision",
]
