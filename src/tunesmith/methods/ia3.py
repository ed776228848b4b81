"""IA3: trained vectors that rescale attention keys, values and the MLP's inner activations (peft).

Targets follow the IA3 paper for LLaMA-style blocks: k_proj and v_proj outputs are
rescaled, and down_proj is a feed-forward module, so its *input* (the MLP's
inner activation) is rescaled. Fewer parameters than LoRA; merges exactly,
because a rescale folds into the adjacent weight.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from peft import IA3Config, get_peft_model
from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods import _peft
from tunesmith.methods.base import MethodError, MethodSettings
from tunesmith.methods.registry import register

IA3_TARGET_MODULES = ["k_proj", "v_proj", "down_proj"]
IA3_FEEDFORWARD_MODULES = ["down_proj"]


class Ia3Settings(MethodSettings):
    """IA3 has no knobs: its rescaled modules are fixed by the paper's recipe."""

    name: Literal["ia3"] = "ia3"


class IA3:
    name = "ia3"
    settings = Ia3Settings
    # The rescale vectors start at 1 and need larger steps than LoRA (the IA3 paper uses 3e-3).
    default_learning_rate = 3e-3
    artifact = "peft-adapter"
    mergeable = True
    packs = True
    shardable = True
    switches_off = True

    def base_load_options(self, settings: Ia3Settings) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: Ia3Settings) -> nn.Module:
        config = IA3Config(
            target_modules=IA3_TARGET_MODULES,
            feedforward_modules=IA3_FEEDFORWARD_MODULES,
            task_type="CAUSAL_LM",
        )
        try:
            return get_peft_model(model, config)
        except ValueError as error:
            raise MethodError(
                f"ia3 rescales the modules named {', '.join(IA3_TARGET_MODULES)} (LLaMA-style "
                f"blocks), and {type(model).__name__} has none of them ({error}). Use "
                "method.name: lora, whose target_modules can name this model's layers."
            ) from None

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _peft.save_adapter(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        return _peft.load_adapter(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        return _peft.merge_adapter(model)


register(IA3())
