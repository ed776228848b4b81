"""Rotary tables and norm outputs follow CPU autocast: bf16 there, fp32 elsewhere."""

from __future__ import annotations

import torch

from tunesmith.methods._dropout import CheapDropout
from tunesmith.models.autocast_paths import compute_dtype_paths


def _tables(model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    embeds = model.model.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    return model.model.rotary_emb(embeds, positions)


def test_tables_are_bf16_under_autocast_and_fp32_otherwise(tiny_model) -> None:
    compute_dtype_paths(compute_dtype_paths(tiny_model))  # hooked once, not twice
    hooks = tiny_model.model.rotary_emb._forward_hooks
    assert len(hooks) == 1
    ids = torch.tensor([[1, 2, 3, 4]])
    cos, sin = _tables(tiny_model, ids)
    assert cos.dtype == sin.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low_cos, low_sin = _tables(tiny_model, ids)
    assert low_cos.dtype == low_sin.dtype == torch.bfloat16
    assert torch.allclose(low_cos.float(), cos, atol=1e-2)
    norm = tiny_model.model.norm
    hidden = torch.randn(1, 4, norm.weight.shape[0])
    assert norm(hidden).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(hidden).dtype == torch.bfloat16


def test_logits_under_autocast_stay_close_to_unhooked(tiny_model, tiny_tokenizer) -> None:
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = tiny_model(input_ids=ids).logits.float()
        compute_dtype_paths(tiny_model)
        after = tiny_model(input_ids=ids).logits.float()
    assert not torch.equal(before, after)  # the hook is in effect
    assert torch.allclose(before, after, atol=5e-2)


def test_adapter_dropout_hands_the_matmul_its_compute_dtype() -> None:
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    for p in (0.0, 0.1):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert CheapDropout(p, torch.float32).train()(x).dtype == torch.bfloat16
        assert CheapDropout(p, torch.float32).train()(x).dtype == torch.float32  # as peft does
        assert CheapDropout(p).train()(x).dtype == torch.bfloat16


def test_lora_outputs_equal_peft_own_input_cast(tiny_model) -> None:
    """Taking over peft's input cast changes no value, in fp32 and under autocast."""
    import copy

    from peft import LoraConfig, get_peft_model

    from tunesmith.methods._dropout import use_cheap_dropout

    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear")
    torch.manual_seed(0)
    theirs = get_peft_model(copy.deepcopy(tiny_model), config)
    ours = use_cheap_dropout(copy.deepcopy(theirs))
    for module in ours.modules():  # nonzero B, so the adapter path counts
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    theirs.load_state_dict(ours.state_dict())
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)


def test_frozen_weights_in_bf16_compute_what_autocast_computed(tiny_model) -> None:
    """Stored in bf16, a frozen weight is what autocast cast it to: same logits, bit for bit;
    adapter weights, norms and the (tied) embedding stay fp32."""
    from tunesmith.methods import get_method, method_settings
    from tunesmith.models.autocast_paths import store_frozen_linears_in

    model = get_method("lora").attach(tiny_model, method_settings(r=4, alpha=8, dropout=0.0))
    for name, parameter in model.named_parameters():  # nonzero B, so the adapters count
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits
        changed = store_frozen_linears_in(model, torch.bfloat16)
        after = model(input_ids=ids).logits
    assert changed > 0
    assert torch.equal(before, after)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n or "norm" in n)
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == (
        torch.bfloat16
    )
