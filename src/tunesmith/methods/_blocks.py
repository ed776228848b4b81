"""Finding the decoder blocks of a causal LM, for the methods that act per block."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from tunesmith.methods.base import MethodError


def decoder_layers(model: PreTrainedModel, method_name: str) -> nn.ModuleList:
    """The model's stack of transformer blocks, first to last.

    Uses `get_decoder()`, which transformers provides for every causal LM, and its
    `layers` list, which LLaMA, Mistral, Qwen, Gemma and Phi-3 style models share.
    """
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise MethodError(
            f"{method_name} needs a decoder with a `layers` list of transformer blocks "
            f"(LLaMA, Mistral, Qwen style); {type(model).__name__} has none. "
            "Use method.name: lora instead."
        )
    return layers
