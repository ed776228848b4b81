"""Served weights stored in the dtype the forward computes in.

Training keeps weights fp32 and autocasts each product to bf16, so autocast casts every
linear weight again at every forward. That is cheap beside a training step's products,
but a decode step multiplies each weight by a handful of rows, and re-casting 135M
weights then costs as much as the products. A served model never changes its weights,
so each plain ``nn.Linear`` is stored once in the compute dtype: autocast would have
cast it to exactly that, so every product, and every answer, is the one `tunesmith eval`
and `generate` compute. Embeddings and norms keep their dtype (autocast does not cast
them); a head tied to the embeddings gets a copy of its own, since the embedding lookup
must go on reading fp32. Quantized layers (bitsandbytes subclasses) are left as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.models.precision import Precision


@torch.no_grad()
def store_linears_in_compute_dtype(module: nn.Module, precision: Precision) -> int:
    """Convert the plain linear weights still stored in ``precision.weights``; the number
    converted (0 when the forward computes in the stored dtype)."""
    if precision.compute == precision.weights:
        return 0
    embeddings = {id(sub.weight) for sub in module.modules() if isinstance(sub, nn.Embedding)}
    converted = 0
    for sub in module.modules():
        if type(sub) is not nn.Linear or sub.weight.dtype != precision.weights:
            continue
        if id(sub.weight) in embeddings:
            sub.weight = nn.Parameter(sub.weight.to(precision.compute), requires_grad=False)
        else:
            sub.weight.data = sub.weight.data.to(precision.compute)
        if sub.bias is not None:
            sub.bias.data = sub.bias.data.to(precision.compute)
        converted += 1
    return converted
