"""Rotary tables follow CPU autocast, so q/k rotate in bf16 there and stay fp32 elsewhere."""

from __future__ import annotations

import torch

from tunesmith.methods._dropout import CheapDropout
from tunesmith.models.rope import rope_in_compute_dtype


def _tables(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    embeds = model.model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    return model.model.rotary_emb(embeds, positions)


def test_tables_are_bf16_under_autocast_and_fp32_otherwise(tiny_model) -> None:
    rope_in_compute_dtype(rope_in_compute_dtype(tiny_model))  # hooked once, not twice
    hooks = tiny_model.model.rotary_emb._forward_hooks
    assert len(hooks) == 1
    ids = torch.tensor([[1, 2, 3, 4]])
    cos, sin = _tables(tiny_model, ids)
    assert cos.dtype == sin.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_cos, low_sin = _tables(tiny_model, ids)
    assert low_cos.dtype == low_sin.dtype == torch.bfloat16
    assert torch.allclose(low_cos.float(), cos, atol=1e-2)


def test_logits_under_autocast_stay_close_to_unhooked(tiny_model, tiny_tokenizer) -> None:
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = tiny_model(input_ids=ids).logits.float()
        rope_in_compute_dtype(tiny_model)
        after = tiny_model(input_ids=ids).logits.float()
    assert not torch.equal(before, after)  # the hook is in effect
    assert torch.allclose(before, after, atol=5e-2)


def test_adapter_dropout_hands_the_matmul_its_compute_dtype() -> None:
    x = torch.randn(4, 8)
    for p in (0.0, 0.1):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert CheapDropout(p).train()(x).dtype == torch.bfloat16
        assert CheapDropout(p).train()(x).dtype == torch.float32
