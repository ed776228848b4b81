"""Dropout for the LoRA-family input path whose mask costs half of torch's on CPU.

peft applies dropout to the input of every adapted linear layer, so a LoRA step on all
linear layers draws one mask per layer per forward. On CPU ``nn.Dropout`` draws them with
``bernoulli_``, measured at 13% of a SmolLM2 LoRA step; 16-bit random integers compared
with a threshold take half as long. The drop probability is rounded to a multiple of
1/32768 (0.05 becomes 0.04999) and the kept values are scaled by the exact inverse of the
keep probability, so the expectation is unchanged. On GPUs torch's fused kernel is used.

It also takes over peft's cast of the adapter input (plain LoRA linear layers): peft casts
the input to the adapter's dtype (fp32) before dropout, and under CPU autocast the
adapter's first matmul casts it straight back to bf16. Here the input goes to the
autocast dtype under CPU autocast and to the adapter's dtype otherwise (what peft does), so
the mask product and the copy autograd keeps for backward are half the size, and the
values reaching the matmul are the same.
"""

from __future__ import annotations

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

_LEVELS = 32768  # int16 random_() draws uniformly from [0, 32767]


class CheapDropout(nn.Module):
    def __init__(self, p: float, input_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.p = p
        self.input_dtype = input_dtype
        """The dtype the input is cast to outside autocast (None: left as it is)."""
        self._threshold = round(p * _LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._cast(x)
        if not self.training or self._threshold == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        draws = torch.empty(x.shape, dtype=torch.int16, device=x.device).random_()
        scale = _LEVELS / (_LEVELS - self._threshold)
        return x * ((draws >= self._threshold).to(x.dtype) * scale)

    def _cast(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            return x.to(torch.get_autocast_dtype("cpu"))
        if self.input_dtype is not None and x.dtype != self.input_dtype:
            return x.to(self.input_dtype)
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_cheap_dropout(model: nn.Module) -> nn.Module:
    """Swap every adapter-input ``nn.Dropout`` peft created for a ``CheapDropout``; on plain
    LoRA linear layers (no DoRA or other variant) it also does peft's input cast."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        plain = isinstance(module, LoraLinear) and not getattr(module, "lora_variant", None)
        for name, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout):
                dtype = module.lora_A[name].weight.dtype if plain else None
                dropouts[name] = CheapDropout(dropout.p, dtype)
        if plain:
            module.cast_input_dtype_enabled = False
    return model
