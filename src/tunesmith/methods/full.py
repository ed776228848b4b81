"""Full fine-tuning: every weight trains; the artifact is a whole model dir.

The most capable and the most memory-hungry method (weights, gradients and two
AdamW moments for every parameter). Its artifact needs no merge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods import _full_model
from tunesmith.methods.base import MethodSettings
from tunesmith.methods.registry import register


class FullSettings(MethodSettings):
    name: Literal["full"] = "full"


class FullFineTuning:
    name = "full"
    settings = FullSettings
    # Every weight moves, so steps are small: larger rates overwrite pretrained knowledge.
    default_learning_rate = 1e-5
    artifact = "model"
    mergeable = True
    packs = True
    shardable = True
    switches_off = False

    def base_load_options(self, settings: FullSettings) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: FullSettings) -> nn.Module:
        return model.requires_grad_(True)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _full_model.save_full_model(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _full_model.load_full_model(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Nothing to fold: the trained model already is the plain model."""
        return _full_model.require_full_model(model, "merge")


register(FullFineTuning())
