"""Next-token logits lined up with the input ids, whatever the method put in front of them.

peft's prompt tuning prepends its virtual tokens to the input embeddings, so the logits it
returns are ``num_virtual_tokens`` positions longer than ``input_ids`` (prefix tuning puts
its virtual tokens in the attention cache instead, and returns logits of the input's
length). Every evaluation that compares logits with ``input_ids`` goes through
`input_aligned_logits`, so scoring code never indexes a virtual-token position.
"""

from __future__ import annotations

import torch
from torch import nn


def input_aligned_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """fp32 logits of shape ``(rows, input length, vocab)`` on the model's device.

    Virtual-token positions, which come first, are dropped; the last ``input length``
    positions are the ones that read the real tokens.
    """
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    return logits[:, -input_ids.shape[1] :].float()
