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

from tunesmith.models.precision import Precision

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


def stores_frozen_linears_in_compute_dtype(
    precision: Precision, device: torch.device, world_size: int = 1
) -> bool:
    """fp32 weights with a half-precision forward on CPU: frozen linear weights are stored
    in the compute dtype (one process only: FSDP wants one dtype per flat shard). Training,
    the plan's parameter count and its probe ask this same question."""
    return device.type == "cpu" and precision.compute != precision.weights and world_size == 1


@torch.no_grad()
def store_frozen_linears_in(
    model: nn.Module, dtype: torch.dtype, *, copy_tied: bool = False
) -> int:
    """Store the frozen floating-point weights (and frozen biases) of ``model``'s plain
    ``nn.Linear`` layers in ``dtype``; returns how many layers changed.

    CPU autocast casts a frozen weight to bf16 on every forward (its cast cache keeps only
    weights that require grad) and autograd keeps that copy for backward, so a LoRA step
    holds the fp32 base and a bf16 copy of it, and a decode step, which multiplies each
    weight by a handful of rows, spends as long re-casting as multiplying. Stored in bf16 the
    weight is what autocast would have cast it to, bit for bit, so every product (and every
    answer `tunesmith eval`, `generate` and `serve` give) is unchanged, without the casts
    or the second copy. Trainable weights, norms and embedding tables (read outside
    autocast) keep their dtype; quantized layers (bitsandbytes subclasses) are left alone.
    A head tied to the embeddings is skipped, or with ``copy_tied`` given a bf16 copy of its
    own (the server's choice: the lookup must go on reading fp32).
    """
    embeddings = {id(sub.weight) for sub in model.modules() if isinstance(sub, nn.Embedding)}
    changed = 0
    for module in model.modules():
        weight = module.weight if type(module) is nn.Linear else None
        if weight is None or weight.requires_grad or weight.dtype == dtype:
            continue
        if not weight.is_floating_point() or (id(weight) in embeddings and not copy_tied):
            continue
        module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
        bias = module.bias
        if bias is not None and not bias.requires_grad:
            module.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
        changed += 1
    return changed
