"""Activations in the compute dtype under CPU autocast, where transformers leaves them fp32.

With fp32 weights and an autocast forward the hidden states stay fp32, so two things
transformers returns in their dtype cost copies on every layer:

- the rotary tables: ``q * cos`` promotes the bf16 query and key projections to fp32, they
  rotate in fp32 and the attention kernel casts them back (two extra copies of q and k per
  layer, forward and backward);
- the RMSNorm output: every linear layer that reads it (q, k, v; gate, up; and each LoRA
  adapter's first matmul) casts the same fp32 tensor to bf16 on its own.

Both return in the autocast dtype here, once, as they do in a model whose weights are bf16.
The residual stream and the norm's statistics stay fp32. Outside CPU autocast (fp32 runs,
CUDA half weights) the hooks change nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_SUFFIXES = ("RotaryEmbedding", "RMSNorm")


def _in_compute_dtype(_module: nn.Module, _args: Any, output: Any) -> Any:
    first = output[0] if isinstance(output, tuple) and output else output
    if not torch.is_tensor(first) or first.device.type != "cpu":
        return output
    if not torch.is_autocast_enabled("cpu"):
        return output
    dtype = torch.get_autocast_dtype("cpu")
    if torch.is_tensor(output):
        return output.to(dtype)
    return tuple(t.to(dtype) if torch.is_floating_point(t) else t for t in output)


def compute_dtype_paths(model: nn.Module) -> nn.Module:
    """Hook ``model``'s rotary-embedding and RMSNorm modules (found by class name) once."""
    for module in model.modules():
        if type(module).__name__.endswith(_SUFFIXES) and not getattr(
            module, "_tunesmith_compute_dtype", False
        ):
            module.register_forward_hook(_in_compute_dtype)
            module._tunesmith_compute_dtype = True
    return model
