"""FLOPs of the operations run inside a ``with`` block, without module hooks.

`torch.utils.flop_counter.FlopCounterMode` also enters a `ModuleTracker`, which hangs
autograd hooks on every module's outputs to attribute FLOPs to modules. Under
non-reentrant gradient checkpointing those hooks keep the tensors recomputed in backward
alive until the step ends, so a probe that counted memory under it saw checkpointing use
*more* memory than no checkpointing (lora-gc on SmolLM2: 4.17 GB planned, 1.67 GB
measured). The plan needs only the total, so this mode counts with the same formulas
(`flop_registry`) and no hooks.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class CountFlops(TorchDispatchMode):
    """``total``: FLOPs of the matmuls, convolutions and attention kernels the registry
    knows, run inside the block (elementwise work is not counted, as in FlopCounterMode)."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        formula = flop_registry.get(packet)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:  # composite ops: count the kernels they decompose into
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out
