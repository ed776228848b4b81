"""Linear layers with oneDNN-packed weights for CPU decoding: generation's products are a
few rows against every weight of the model, so a decode step streams the whole model from
memory, and MKL's plain ``F.linear`` streams a cold weight at a third of the memory's
bandwidth for 1-16 rows (measured on a 2-core AVX2 EPYC: 620 µs for a 576x1536 fp32
weight and 4 rows, 300 µs packed; a SmolLM2 decode step of 16 rows 219 -> 164 ms). bf16
weights (stored so where the CPU computes bf16 natively) gain as much: the four SmolLM2
layer shapes at 4 rows took 311 µs plain and 189 µs packed on an AVX512-BF16 EPYC. The
packed product also takes a row sliced out of a longer batch (the last position, whose
logits pick the next token) as a dense copy: ``F.linear`` handed that strided row runs
a batched product that copies the weight, 81 ms for SmolLM2's output layer in bf16.

Packing is used wherever tunesmith generates (``tunesmith generate``, evaluation's replies,
the server), so what is served is computed by the same kernels as what was evaluated. A
packed layer computes its packed product only without autograd, in the weight's dtype
(outside autocast, or under an autocast to that dtype) and while its weight is the one
packed (same tensor, same version); anything else (training, a step that changed the
weight) takes ``F.linear`` as before. The packed copy is extra memory,
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
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and _computes_in(weight.dtype, x)
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.layer
        if not self.current(x):
            return F.linear(x, layer.weight, layer.bias)
        flat = x.reshape(-1, x.shape[-1]).to(self.weight.dtype)
        if flat.stride() != (flat.shape[1], 1):  # a row sliced out of a longer batch
            flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
        bias = None if layer.bias is None else layer.bias.to(self.weight.dtype)
        out = torch.ops.mkldnn._linear_pointwise(flat, self.packed, bias, "none", [], "")
        return out.reshape(*x.shape[:-1], out.shape[-1])


def _computes_in(dtype: torch.dtype, x: torch.Tensor) -> bool:
    """Whether ``F.linear`` would compute this product in ``dtype``: outside autocast when
    ``x`` has it, inside when autocast casts to it (as it does a bf16 weight's inputs)."""
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == dtype and x.dtype in (dtype, torch.float32)
    return x.dtype == dtype


def _packable(module: nn.Module) -> bool:
    if type(module) is not nn.Linear:  # quantized and adapter layers keep their own
        return False
    weight = module.weight
    return (
        weight.device.type == "cpu"
        and weight.dtype in PACKED_DTYPES
        and not weight.is_inference()  # no version counter to tell a changed weight by
        and not isinstance(module.forward, _PackedForward)
        and available(weight.dtype)
    )


PACKED_DTYPES = (torch.float32, torch.bfloat16)
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}


def available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build packs linear weights of ``dtype`` (oneDNN on the CPU; bf16
    where the CPU has bf16 kernels) and the packed product agrees with ``F.linear`` on a
    small layer; probed once per process and dtype."""
    return _probe(dtype)


@functools.cache
def _probe(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        # generation runs under inference mode, whose tensors keep no version counter:
        # the probe's layer must be an ordinary one, as the model's weights are
        with torch.inference_mode(False), torch.no_grad():
            layer = nn.Linear(256, 256).to(dtype)
            x = torch.randn(3, 256, dtype=dtype)
            packed = _PackedForward(layer)(x)
            plain = F.linear(x, layer.weight, layer.bias)
        return bool(torch.allclose(packed.float(), plain.float(), atol=_TOLERANCE[dtype]))
    except (RuntimeError, AttributeError):  # an op missing from this build or CPU
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
    adapters = _adapter_layers(model)
    layers = [m for m in model.modules() if _packable(m) and id(m) not in adapters]
    for layer in layers:
        layer.forward = _PackedForward(layer)
    return layers


def pack_linears(model: nn.Module) -> None:
    """Give the model's fp32 and bf16 CPU linear layers packed weights for good (nothing
    where this build cannot pack)."""
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
