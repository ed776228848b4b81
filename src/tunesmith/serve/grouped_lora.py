"""Mixed-adapter LoRA for the running batch, with each adapter's rows taken as one slice.

peft mixes adapters per row (``adapter_names``) by registering a pre-hook on every LoRA
layer at every forward, and in every layer gathering each adapter's rows by index and
scattering its output back. At decode time on a CPU those walks, gathers and scatters
cost as much as the model's own products. The running batch keeps its rows grouped by
adapter instead, so a layer takes an adapter's rows as one contiguous slice: the same
products peft computes (``lora_B(lora_A(dropout(x))) * scaling`` on that adapter's rows,
added to the base layer's output), without the per-forward hooks and copies.

Only plain ``lora.Linear`` layers are taken over; a model with any other peft layer
(embedding or convolution LoRA, ``modules_to_save`` copies, LoRA variants) keeps peft's
``adapter_names`` path, and so does every forward made outside `grouped` (``generate``
batches of sampled requests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

Segment = tuple[str, int, int]
"""An adapter's name and the [start, end) rows of the batch that use it."""


class _Segments:
    """The rows of each adapter in the forward now running (None: peft decides)."""

    current: list[Segment] | None = None


_ATTRIBUTE = "_tunesmith_segments"


def segments_of(names: list[str]) -> list[Segment]:
    """Runs of equal names, in order: rows grouped by adapter give one segment each."""
    segments: list[Segment] = []
    for index, name in enumerate(names):
        if segments and segments[-1][0] == name:
            segments[-1] = (name, segments[-1][1], index + 1)
        else:
            segments.append((name, index, index + 1))
    return segments


def _grouped_forward(holder: _Segments, original: Any) -> Any:
    def forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        segments = holder.current
        if segments is None or self.disable_adapters or self.merged:
            return original(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        result_dtype = result.dtype
        for name, start, end in segments:
            if name not in self.lora_A or name in self.lora_variant:
                continue  # the base's rows, or an adapter without this layer
            lora_a, lora_b = self.lora_A[name], self.lora_B[name]
            rows = x[start:end].to(lora_a.weight.dtype)
            output = lora_b(lora_a(self.lora_dropout[name](rows))) * self.scaling[name]
            result[start:end] += output.to(result_dtype)
        return result

    return forward


def install(model: nn.Module) -> bool:
    """Take over the model's LoRA layers (again after an adapter is loaded: new layers may
    have appeared). False when some layer needs peft's own mixing; nothing is changed then."""
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    if any(type(layer) is not LoraLinear for layer in layers) or any(
        isinstance(module, AuxiliaryTrainingWrapper) for module in model.modules()
    ):
        uninstall(model)
        return False
    holder = getattr(model, _ATTRIBUTE, None) or _Segments()
    setattr(model, _ATTRIBUTE, holder)
    for layer in layers:
        if getattr(layer, _ATTRIBUTE, None) is not holder:
            original = type(layer).forward.__get__(layer)
            layer.forward = MethodType(_grouped_forward(holder, original), layer)
            setattr(layer, _ATTRIBUTE, holder)
    return True


def uninstall(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, LoraLayer) and _ATTRIBUTE in vars(module):
            del module.forward
            delattr(module, _ATTRIBUTE)
    if _ATTRIBUTE in vars(model):
        delattr(model, _ATTRIBUTE)


def installed(model: nn.Module) -> bool:
    return getattr(model, _ATTRIBUTE, None) is not None


@contextmanager
def grouped(model: nn.Module, segments: list[Segment]) -> Iterator[None]:
    """Forwards inside use ``segments`` to pick each row's adapter."""
    holder: _Segments = getattr(model, _ATTRIBUTE)
    holder.current = segments
    try:
        yield
    finally:
        holder.current = None
