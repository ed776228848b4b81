"""LoRA: low-rank updates added to the chosen linear layers (peft).

DoRA and QLoRA build their peft config with `build_lora_config` too, so the three
read the same knobs (`r`, `alpha`, `dropout`, `target_modules`) the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from peft import LoraConfig, get_peft_model
from pydantic import Field
from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods import _peft
from tunesmith.methods._dropout import use_cheap_dropout
from tunesmith.methods.base import MethodSettings
from tunesmith.methods.registry import register


class LoraSettings(MethodSettings):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="Rank of each low-rank update.")
    alpha: float = Field(32, gt=0, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or names like [q_proj, v_proj]."
    )


def build_lora_config(settings: LoraSettings, *, use_dora: bool = False) -> LoraConfig:
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        use_dora=use_dora,
        task_type="CAUSAL_LM",
    )


def attach_lora(model: nn.Module, settings: LoraSettings, *, use_dora: bool = False) -> nn.Module:
    """peft LoRA (or DoRA) on ``model``, with the cheaper dropout mask on CPU."""
    return use_cheap_dropout(get_peft_model(model, build_lora_config(settings, use_dora=use_dora)))


class LoRA:
    name = "lora"
    settings = LoraSettings
    default_learning_rate = 2e-4
    artifact = "peft-adapter"
    mergeable = True
    packs = True
    shardable = True
    switches_off = True

    def base_load_options(self, settings: LoraSettings) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: LoraSettings) -> nn.Module:
        return attach_lora(model, settings)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _peft.save_adapter(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _peft.load_adapter(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        return _peft.merge_adapter(model)


register(LoRA())
