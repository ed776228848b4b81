"""Rotary position tables in the compute dtype under CPU autocast.

transformers' rotary embeddings return cos/sin in the dtype of the hidden states, which
stay fp32 when only the forward pass is autocast (the weights are fp32). The bf16 query
and key projections are then promoted to fp32 by ``q * cos``, rotated in fp32 and cast back
to bf16 by the attention kernel: two extra copies of q and k per layer, forward and
backward. Returning the tables in the autocast dtype keeps the rotation in bf16, as it is in
a model whose weights are bf16. Outside autocast (fp32 runs, CUDA half weights) the hook
changes nothing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _tables_in_compute_dtype(_module: nn.Module, _args: Any, output: Any) -> Any:
    if not isinstance(output, tuple) or not output or not torch.is_tensor(output[0]):
        return output
    device = output[0].device.type
    if device != "cpu" or not torch.is_autocast_enabled(device):
        return output
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if torch.is_floating_point(t) else t for t in output)


def rope_in_compute_dtype(model: nn.Module) -> nn.Module:
    """Hook every rotary-embedding module of ``model`` (found by class name) once."""
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and not getattr(
            module, "_tunesmith_rope_hook", False
        ):
            module.register_forward_hook(_tables_in_compute_dtype)
            module._tunesmith_rope_hook = True
    return model
