"""Dropout for the LoRA-family input path whose mask costs half of torch's on CPU.

peft applies dropout to the input of every adapted linear layer, so a LoRA step on all
linear layers draws one mask per layer per forward. On CPU ``nn.Dropout`` draws them with
``bernoulli_``, measured at 13% of a SmolLM2 LoRA step; 16-bit random integers compared
with a threshold take half as long. The drop probability is rounded to a multiple of
1/32768 (0.05 becomes 0.04999) and the kept values are scaled by the exact inverse of the
keep probability, so the expectation is unchanged. On GPUs torch's fused kernel is used.

Under CPU autocast the input is cast to the compute dtype first (also at p=0 and in eval):
peft casts a bf16 input up to the fp32 adapter's dtype and the adapter's first matmul casts
it back down, so the mask product (and the copy autograd keeps for backward) is half the
size and the matmul's own cast is a no-op; the values reaching the matmul are the same.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 32768  # int16 random_() draws uniformly from [0, 32767]


class CheapDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self._threshold = round(p * _LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            x = x.to(torch.get_autocast_dtype("cpu"))  # peft cast it up to the fp32 adapter
        if not self.training or self._threshold == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        draws = torch.empty(x.shape, dtype=torch.int16, device=x.device).random_()
        scale = _LEVELS / (_LEVELS - self._threshold)
        return x * ((draws >= self._threshold).to(x.dtype) * scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cheap_dropout(model: nn.Module) -> nn.Module:
    """Swap every adapter-input ``nn.Dropout`` peft created for a ``CheapDropout``."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, nn.Dropout):
                    dropouts[name] = CheapDropout(dropout.p)
    return model
