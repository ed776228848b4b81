"""Live tensor bytes, counted at the source: every storage an operation creates, until freed.

CPU processes have no allocator statistics to ask (RSS mixes in the interpreter, libraries
and freed-but-kept heap), so the probe counts the storages that tensors allocated inside
the mode hold, and their high-water mark. The same count works on CUDA, where it matches
what `torch.cuda.max_memory_allocated` sees of those tensors (before the allocator's
rounding to blocks).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


class LiveTensorBytes(TorchDispatchMode):
    """Within the ``with`` block: ``current`` bytes held by storages created there, and
    their ``peak``. Tensors that existed before (the weights) are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self._storages: dict[int, tuple[weakref.ref, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in _tensors(out):
            self._track(tensor)
        return out

    def reset_peak(self) -> None:
        self.peak = self.current

    def _track(self, tensor: torch.Tensor) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less tensors
            return
        key = id(storage)
        known = self._storages.get(key)
        if known is not None and known[0]() is storage:
            return
        size = storage.nbytes()
        reference = weakref.ref(storage, functools.partial(self._freed, key))
        self._storages[key] = (reference, size)
        self.current += size
        self.peak = max(self.peak, self.current)

    def _freed(self, key: int, reference: weakref.ref) -> None:
        known = self._storages.get(key)
        if known is not None and known[0] is reference:
            del self._storages[key]
            self.current -= known[1]
