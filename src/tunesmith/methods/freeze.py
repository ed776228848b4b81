"""Freeze tuning: only the last `trainable_layers` blocks train (and, if asked, the head).

The later blocks hold the most task-specific features, so training just them
adapts the model at a fraction of full fine-tuning's optimizer memory, with no
adapter to merge. `train_head` also trains the final norm, the LM head and the
input embeddings (one tensor when the embeddings are tied, as in SmolLM2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods import _full_model
from tunesmith.methods._blocks import decoder_layers
from tunesmith.methods.base import MethodError, MethodSettings
from tunesmith.methods.registry import register


class FreezeSettings(MethodSettings):
    name: Literal["freeze"] = "freeze"
    trainable_layers: int = Field(
        2, ge=0, description="Number of last transformer blocks to train."
    )
    train_head: bool = Field(False, description="Also train the LM head/embeddings and final norm.")


class FreezeTuning:
    name = "freeze"
    settings = FreezeSettings
    # Whole blocks train, as in full fine-tuning, but fewer of them: a somewhat larger step.
    default_learning_rate = 5e-5
    artifact = "model"
    mergeable = True
    packs = True
    shardable = True
    switches_off = False

    def base_load_options(self, settings: FreezeSettings) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: FreezeSettings) -> nn.Module:
        layers = decoder_layers(model, self.name)
        count = settings.trainable_layers
        if count > len(layers):
            raise MethodError(
                f"method.trainable_layers is {count}, but the model has {len(layers)} blocks. "
                f"Set it between 1 and {len(layers)}."
            )
        if count == 0 and not settings.train_head:
            raise MethodError(
                "method.trainable_layers is 0 and method.train_head is false, so nothing would "
                "train. Set method.trainable_layers to 1 or more, or method.train_head: true."
            )
        model.requires_grad_(False)
        for layer in layers[len(layers) - count :]:
            layer.requires_grad_(True)
        if settings.train_head:
            model.get_input_embeddings().requires_grad_(True)
            model.get_output_embeddings().requires_grad_(True)
            final_norm = getattr(model.get_decoder(), "norm", None)
            if isinstance(final_norm, nn.Module):
                final_norm.requires_grad_(True)
        return model

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _full_model.save_full_model(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _full_model.load_full_model(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Nothing to fold: the trained blocks are the model's own weights."""
        return _full_model.require_full_model(model, "merge")


register(FreezeTuning())
