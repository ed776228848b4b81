"""The LoRA-family input dropout: same statistics as nn.Dropout, cheaper mask on CPU."""

from __future__ import annotations

import torch
from torch import nn

from tunesmith.methods import get_method, method_settings
from tunesmith.methods._dropout import CheapDropout


def test_drops_the_asked_share_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    dropout = CheapDropout(0.1).train()
    x = torch.ones(1000, 1000, requires_grad=True)
    y = dropout(x)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - 0.1) < 0.002  # 1e6 draws: the standard error is 0.0003
    assert abs(float(y.mean()) - 1.0) < 0.005
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # no gradient through what was dropped


def test_is_the_identity_in_eval_mode_and_at_zero() -> None:
    x = torch.randn(8, 16)
    assert CheapDropout(0.5).eval()(x) is x
    assert CheapDropout(0.0).train()(x) is x


def test_lora_uses_it_with_the_configured_probability(tiny_model) -> None:
    model = get_method("lora").attach(tiny_model, method_settings(r=4, alpha=8, dropout=0.05))
    dropouts = [m for m in model.modules() if isinstance(m, CheapDropout)]
    assert dropouts and all(d.p == 0.05 for d in dropouts)
    assert not any(
        isinstance(m, nn.Dropout) for name, m in model.named_modules() if "lora_dropout" in name
    )
