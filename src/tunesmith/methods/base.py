"""The shape every fine-tuning method has, and helpers that all of them share."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from torch import nn
from transformers import PreTrainedModel

from tunesmith.config import MethodConfig
from tunesmith.errors import TunesmithError


class MethodError(TunesmithError):
    """A method that cannot do what was asked (e.g. merge prefix tuning); says what to do."""


class Method(Protocol):
    """How one fine-tuning method adapts, saves, reloads and merges a model.

    `attach` returns the module to train with exactly the method's parameters
    trainable. `save` writes an artifact the ecosystem loads without tunesmith
    (peft adapter dir or a `from_pretrained` model dir; bottleneck adapters,
    which peft lacks, use a small safetensors + JSON format of their own);
    `load` reverses it on a freshly loaded base model (loaded with
    `base_load_options`).

    `mergeable` is True when `merge` works whatever the settings. When it is
    False, `merge` raises MethodError saying why, except for settings that do
    fold (bottleneck adapters with a linear activation); callers that want a
    merged model call `merge` and report the MethodError.
    """

    name: str
    default_learning_rate: float
    mergeable: bool

    def base_load_options(self, settings: MethodConfig) -> dict[str, object]:
        """Extra `from_pretrained` keyword arguments for the base (e.g. 4-bit quantization)."""
        ...

    def attach(self, model: PreTrainedModel, settings: MethodConfig) -> nn.Module: ...

    def save(self, model: nn.Module, out_dir: Path) -> None: ...

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module: ...

    def merge(self, model: nn.Module) -> PreTrainedModel: ...


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        count = parameter.numel()
        # bitsandbytes 4-bit weights pack two values per byte.
        if parameter.__class__.__name__ == "Params4bit":
            count *= 2
        total += count
        if parameter.requires_grad:
            trainable += count
    return trainable, total
