"""Full fine-tuning: every weight trains; the artifact is a whole model dir.

The most capable and the most memory-hungry method (weights, gradients and two
AdamW moments for every parameter). Its artifact needs no merge.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import PreTrainedModel

from tunesmith.config import MethodConfig
from tunesmith.methods import _full_model


class FullFineTuning:
    name = "full"
    # Every weight moves, so steps are small: larger rates overwrite pretrained knowledge.
    default_learning_rate = 1e-5
    mergeable = True

    def base_load_options(self, settings: MethodConfig) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: MethodConfig) -> nn.Module:
        return model.requires_grad_(True)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _full_model.save_full_model(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _full_model.load_full_model(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Nothing to fold: the trained model already is the plain model."""
        return _full_model.require_full_model(model, "merge")
