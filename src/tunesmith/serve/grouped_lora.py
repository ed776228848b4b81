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

With several adapters in the batch, a layer's small products are the decode step's
largest overhead on a CPU (two calls per adapter per layer, each ~20 µs however few its
rows). So the adapters' A matrices are stacked, and their B matrices side by side: one
product gives every row all adapters' ``A x``, a 0/1 mask keeps each row's own adapter's
columns, one product with the stacked B and each row's ``scaling`` give what peft adds. A
masked-out column contributes an exact zero, and the scaling is applied after B as peft
applies it, so each row's sum has the same terms. Training layers (dropout in effect) and
LoRA with a bias on B keep the per-adapter products.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn
from torch.nn import functional as F

Segment = tuple[str, int, int]
"""An adapter's name and the [start, end) rows of the batch that use it."""


class _Segments:
    """The rows of each adapter in the forward now running (None: peft decides)."""

    current: list[Segment] | None = None
    key: tuple[object, ...] = ()
    """What a layer's prepared products depend on: the segments and the adapters loaded
    (``generation`` grows whenever `install` runs, as it does after every load)."""
    generation: int = 0


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


@dataclass
class _Stacked:
    """One layer's adapters' A rows stacked and B columns side by side, for ``names``."""

    names: tuple[str, ...]
    sources: tuple[torch.Tensor, ...]
    """The weights stacked; held (so no other tensor can take their place) and compared by
    identity, so an adapter deleted and loaded again under its name is stacked again."""
    a: torch.Tensor
    b: torch.Tensor
    columns: dict[str, tuple[int, int]]


_STACKED = "_tunesmith_stacked"


def _sources(layer: LoraLinear, names: tuple[str, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(w for n in names for w in (layer.lora_A[n].weight, layer.lora_B[n].weight))


def _stacked(layer: LoraLinear, names: tuple[str, ...]) -> _Stacked:
    cached: _Stacked | None = vars(layer).get(_STACKED)
    sources = _sources(layer, names)
    if (
        cached is not None
        and cached.names == names
        and len(cached.sources) == len(sources)
        and all(a is b for a, b in zip(cached.sources, sources, strict=True))
    ):
        return cached
    columns, start = {}, 0
    for name in names:
        rank = layer.lora_A[name].weight.shape[0]
        columns[name] = (start, start + rank)
        start += rank
    a = torch.cat([layer.lora_A[n].weight for n in names])
    b = torch.cat([layer.lora_B[n].weight for n in names], dim=1)
    stacked = _Stacked(names, sources, a, b, columns)
    vars(layer)[_STACKED] = stacked
    return stacked


def _row_weights(
    layer: LoraLinear, stacked: _Stacked, segments: list[Segment], x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's 0/1 mask over the stacked columns and its adapter's scaling (0 for the
    base's rows), shaped to broadcast over ``x``'s positions."""
    rows = segments[-1][2]
    keep = torch.zeros(rows, stacked.a.shape[0])
    scale = torch.zeros(rows)
    for name, start, end in segments:
        if name in stacked.columns:
            first, last = stacked.columns[name]
            keep[start:end, first:last] = 1.0
            scale[start:end] = float(layer.scaling[name])
    middle = (1,) * (x.dim() - 2)
    keep = keep.view(-1, *middle, keep.shape[1])
    scale = scale.view(-1, *middle, 1)
    return keep.to(x.device), scale.to(x.device)


def _stackable(layer: LoraLinear, names: tuple[str, ...]) -> bool:
    return not layer.training and not any(
        layer.lora_bias.get(name, False) or name in layer.lora_variant for name in names
    )


@dataclass
class _Prepared:
    """A layer's products for the segments of ``key``: None where only the base's rows (or
    adapters without this layer) are in the batch, or where peft's per-adapter products
    are needed."""

    key: tuple[object, ...]
    stacked: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None
    per_adapter: bool


_PREPARED = "_tunesmith_prepared"


def _prepare(layer: LoraLinear, segments: list[Segment], x: torch.Tensor, key) -> _Prepared:
    names = tuple(dict.fromkeys(name for name, _, _ in segments if name in layer.lora_A))
    if not names:
        return _Prepared(key, None, False)
    if not _stackable(layer, names):
        return _Prepared(key, None, True)
    stacked = _stacked(layer, names)
    keep, scale = _row_weights(layer, stacked, segments, x)
    return _Prepared(key, (stacked.a, stacked.b, keep.to(stacked.a.dtype), scale), False)


def _grouped_forward(holder: _Segments, original: Any) -> Any:
    """The layer's forward inside `grouped`: what depends only on the batch's segments (the
    stacked weights, the row masks) is prepared once per batch shape, not at every step."""

    def forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        segments = holder.current
        if segments is None or self.disable_adapters or self.merged:
            return original(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        key = (*holder.key, x.dim(), x.device, self.training)
        prepared: _Prepared | None = vars(self).get(_PREPARED)
        if prepared is None or prepared.key != key:
            prepared = _prepare(self, segments, x, key)
            vars(self)[_PREPARED] = prepared
        if prepared.per_adapter:
            return _per_adapter(self, x, result, segments)
        if prepared.stacked is None:
            return result  # only the base's rows, or adapters without this layer
        a, b, keep, scale = prepared.stacked
        shrunk = F.linear(x if x.dtype == a.dtype else x.to(a.dtype), a)
        lora = F.linear(shrunk * keep, b) * scale
        return result + (lora if lora.dtype == result.dtype else lora.to(result.dtype))

    return forward


def _per_adapter(
    layer: LoraLinear, x: torch.Tensor, result: torch.Tensor, segments: list[Segment]
) -> torch.Tensor:
    for name, start, end in segments:
        if name not in layer.lora_A or name in layer.lora_variant:
            continue  # the base's rows, or an adapter without this layer
        lora_a, lora_b = layer.lora_A[name], layer.lora_B[name]
        rows = x[start:end].to(lora_a.weight.dtype)
        output = lora_b(lora_a(layer.lora_dropout[name](rows))) * layer.scaling[name]
        result[start:end] += output.to(result.dtype)
    return result


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
    holder.generation += 1  # an adapter loaded (again): every prepared product is stale
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
            vars(module).pop(_STACKED, None)
            vars(module).pop(_PREPARED, None)
    if _ATTRIBUTE in vars(model):
        delattr(model, _ATTRIBUTE)


def installed(model: nn.Module) -> bool:
    return getattr(model, _ATTRIBUTE, None) is not None


@contextmanager
def grouped(model: nn.Module, segments: list[Segment]) -> Iterator[None]:
    """Forwards inside use ``segments`` to pick each row's adapter."""
    holder: _Segments = getattr(model, _ATTRIBUTE)
    holder.current = segments
    holder.key = (holder.generation, tuple(segments))
    try:
        yield
    finally:
        holder.current = None
