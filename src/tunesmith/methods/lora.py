"""LoRA: low-rank updates added to the chosen linear layers (peft).

DoRA and QLoRA build their peft config with `build_lora_config` too, so the three
read the same knobs (`r`, `alpha`, `dropout`, `target_modules`) the same way.
"""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from tunesmith.config import MethodConfig
from tunesmith.methods import _peft
from tunesmith.methods._dropout import use_cheap_dropout


def build_lora_config(settings: MethodConfig, *, use_dora: bool = False) -> LoraConfig:
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )


def attach_lora(model: nn.Module, settings: MethodConfig, *, use_dora: bool = False) -> nn.Module:
    """peft LoRA (or DoRA) on ``model``, with the cheaper dropout mask on CPU."""
    return use_cheap_dropout(get_peft_model(model, build_lora_config(settings, use_dora=use_dora)))


class LoRA:
    name = "lora"
    default_learning_rate = 2e-4
    mergeable = True

    def base_load_options(self, settings: MethodConfig) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: MethodConfig) -> nn.Module:
        return attach_lora(model, settings)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _peft.save_adapter(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _peft.load_adapter(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        return _peft.merge_adapter(model)
