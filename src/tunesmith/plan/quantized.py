"""A QLoRA probe on real 4-bit layers: the shallow model's linear weights put in NF4.

The probe used to stand LoRA in for QLoRA (same trainable set, float linear layers), so
whatever bitsandbytes' CPU path allocates (each 4-bit weight dequantized to the compute
dtype in forward and again in backward) was never seen. Probing the shallow model with
the same `Linear4bit` layers, quantized with the QLoRA method's own `BitsAndBytesConfig`,
counts the tensors it sees instead of modelling them. On SmolLM2 they turned out small
(the copies are freed layer by layer); what a QLoRA run holds beyond them is the pages and
heap the float weights leave, which `estimate` adds from the parameter counts.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tunesmith.plan.weights import nf4_parameter_ids


def quantize_linear_layers(base: nn.Module, config: Any, device: torch.device) -> nn.Module:
    """``base`` with the linear layers bitsandbytes would quantize under ``config`` (the
    method's `BitsAndBytesConfig`) replaced by 4-bit ones (random weights quantized in
    place; the head and embeddings stay float)."""
    import bitsandbytes

    quantized = nf4_parameter_ids(base)
    for parent in list(base.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or id(child.weight) not in quantized:
                continue
            layer = bitsandbytes.nn.Linear4bit(
                child.in_features, child.out_features, bias=child.bias is not None,
                compute_dtype=config.bnb_4bit_compute_dtype,
                compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type, device="meta",
            )  # fmt: skip
            layer.weight = bitsandbytes.nn.Params4bit(
                child.weight.data, requires_grad=False,
                compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type, module=layer,
            )  # fmt: skip
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer.to(device))
    base.is_loaded_in_4bit = True
    return base
