"""DoRA: LoRA on the direction of each weight plus a trained per-row magnitude (peft).

Slightly more parameters and compute than LoRA (one magnitude vector per adapted
layer); often closer to full fine-tuning at the same rank. Merges like LoRA.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods import _peft
from tunesmith.methods.lora import LoraSettings, attach_lora
from tunesmith.methods.registry import register


class DoraSettings(LoraSettings):
    name: Literal["dora"] = "dora"  # type: ignore[assignment]


class DoRA:
    name = "dora"
    settings = DoraSettings
    default_learning_rate = 2e-4
    artifact = "peft-adapter"
    mergeable = True
    packs = True
    shardable = True
    switches_off = True

    def base_load_options(self, settings: DoraSettings) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: DoraSettings) -> nn.Module:
        return attach_lora(model, settings, use_dora=True)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _peft.save_adapter(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _peft.load_adapter(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        return _peft.merge_adapter(model)


register(DoRA())
