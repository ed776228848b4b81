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


def frozen_matmul_weights_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Store the frozen fp32 weights of ``model``'s linear layers in ``dtype``; returns how
    many bytes that frees.

    CPU autocast casts a frozen weight to bf16 on every forward (its cast cache keeps only
    weights that require grad) and autograd keeps that copy for backward, so a LoRA step
    holds the fp32 base and a bf16 copy of it. Stored in bf16 the weight is what autocast
    would have cast it to, bit for bit, so the matmuls compute the same values, without the
    casts or the second copy. Trainable weights, norms, biases that train and the embedding
    table (read outside autocast, and tied to the head in many models) stay as they are.
    """
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = embedding.weight.data_ptr() if embedding is not None else None
    freed = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if weight.requires_grad or weight.dtype != torch.float32 or weight.data_ptr() == tied:
            continue
        freed += weight.numel() * (weight.element_size() - torch.finfo(dtype).bits // 8)
        module.weight = nn.Parameter(weight.detach().to(dtype), requires_grad=False)
        bias = module.bias
        if bias is not None and not bias.requires_grad:
            module.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    return freed
