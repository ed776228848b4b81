"""Instruction tuning: next-token loss on what the assistant says (masks from the data stage)."""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.data.batching import Batch
from tunesmith.objectives.losses import causal_lm_nll_sum


class SFT:
    name = "sft"

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        return causal_lm_nll_sum(model, batch)
