"""Linear layers with oneDNN-packed weights for CPU decoding: generation's products are a
few rows against every weight of the model, so a decode step streams the whole model from
memory, and MKL's plain ``F.linear`` streams a cold weight at a third of the memory's
bandwidth for 1-16 rows (measured on a 2-core AVX2 EPYC: 620 µs for a 576x1536 fp32
weight and 4 rows, 300 µs packed; a SmolLM2 decode step of 16 rows 219 -> 164 ms).

Packing is used wherever tunesmith generates (``tunesmith generate``, evaluation's replies,
the server), so what is served is computed by the same kernels as what was evaluated. A
packed layer computes its packed product only without autograd, outside autocast and while
its weight is the one packed (same tensor, same version); anything else (training, a step
that changed the weight) takes ``F.linear`` as before. The packed copy is extra memory,
about the size of the packed weights; `packed_linears` frees it on exit.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F


class _PackedForward:
    """A linear layer's forward that takes the packed weight while it is current."""

    def __init__(self, layer: nn.Linear) -> None:
        self._layer = weakref.ref(layer)  # the layer holds this forward: no cycle
        self.weight = layer.weight
        self.version = layer.weight._version
        self.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), 16)

    @property
    def layer(self) -> nn.Linear:
        layer = self._layer()
        assert layer is not None, "a forward outlived its layer"
        return layer

    def current(self, x: torch.Tensor) -> bool:
        weight = self.layer.weight
        return (
            weight is self.weight
            and weight._version == self.version
            and x.dtype == weight.dtype
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not self.current(x):
            return F.linear(x, layer.weight, layer.bias)
        flat = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, layer.bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _packable(module: nn.Module) -> bool:
    if type(module) is not nn.Linear:  # quantized and adapter layers keep their own
        return False
    weight = module.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and not isinstance(module.forward, _PackedForward)
    )


@functools.cache
def available() -> bool:
    """Whether this torch build packs linear weights (oneDNN on the CPU) and the packed
    product agrees with ``F.linear`` on a small layer; probed once per process."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        layer = nn.Linear(256, 256)
        x = torch.randn(3, 256)
        with torch.no_grad():
            packed = _PackedForward(layer)(x)
            return bool(torch.allclose(packed, F.linear(x, layer.weight, layer.bias), atol=1e-4))
    except (RuntimeError, AttributeError):  # an op missing from this build
        return False


def _adapter_layers(model: nn.Module) -> set[int]:
    """LoRA's A and B layers: small, and multiplied as plain products wherever tunesmith
    runs adapters (peft's layers, the server's stacked products), so they stay plain and
    every path adds the same adapter terms."""
    found: set[int] = set()
    for module in model.modules():
        for name in ("lora_A", "lora_B"):
            layers = getattr(module, name, None)
            if isinstance(layers, nn.ModuleDict):
                found.update(id(layer) for layer in layers.values())
    return found


def _pack(model: nn.Module) -> list[nn.Linear]:
    if not available():
        return []
    adapters = _adapter_layers(model)
    layers = [m for m in model.modules() if _packable(m) and id(m) not in adapters]
    for layer in layers:
        layer.forward = _PackedForward(layer)
    return layers


def pack_linears(model: nn.Module) -> None:
    """Give the model's fp32 CPU linear layers packed weights for good (nothing where this
    build cannot pack)."""
    _pack(model)


def packed_bytes(model: nn.Module) -> int:
    """The memory the model's packed copies take now."""
    return sum(
        m.weight.numel() * m.weight.element_size()
        for m in model.modules()
        if isinstance(getattr(m, "forward", None), _PackedForward)
    )


@contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Packed weights for the duration of a generation; layers packed before stay packed."""
    layers = _pack(model)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
