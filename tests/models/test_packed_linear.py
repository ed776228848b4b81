"""Packed linear weights: the packed product where it is valid, ``F.linear`` everywhere else."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tunesmith.models import packed_linear
from tunesmith.models.packed_linear import pack_linears, packed_bytes, packed_linears

pytestmark = pytest.mark.skipif(
    not packed_linear.available(), reason="this torch build has no oneDNN packed linear"
)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256))


def _packed_of(layer: nn.Linear):
    return layer.__dict__.get("forward")


def test_large_fp32_layers_are_packed_and_compute_the_same_product() -> None:
    model = _model()
    x = torch.randn(2, 5, 256)
    with torch.no_grad():
        expected = model[2](F.relu(model[0](x)))
        pack_linears(model)
        got = model[2](F.relu(model[0](x)))
    assert packed_bytes(model) == (256 * 512 + 512 * 256) * 4
    assert isinstance(_packed_of(model[0]), packed_linear._PackedForward)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # and the packed kernel is the one that ran
        flat = torch.ops.mkldnn._linear_pointwise(
            x.reshape(-1, 256), _packed_of(model[0]).packed, model[0].bias, "none", [], ""
        )
        assert torch.equal(model[0](x).reshape(-1, 512), flat)


def test_training_takes_the_plain_product_and_gradients_flow() -> None:
    model = _model()
    pack_linears(model)
    x = torch.randn(3, 256)
    out = model[0](x)
    assert torch.equal(out, F.linear(x, model[0].weight, model[0].bias))
    out.sum().backward()
    assert model[0].weight.grad is not None


def test_a_weight_changed_in_place_is_never_served_from_the_stale_pack() -> None:
    model = _model()
    pack_linears(model)
    with torch.no_grad():
        model[0].weight.mul_(2.0)  # what an optimizer step does
        x = torch.randn(4, 256)
        assert torch.equal(model[0](x), F.linear(x, model[0].weight, model[0].bias))
        model[0].weight = nn.Parameter(torch.randn(512, 256))  # a replaced weight, too
        assert torch.equal(model[0](x), F.linear(x, model[0].weight, model[0].bias))


def test_fp32_weights_under_bf16_autocast_keep_the_plain_product() -> None:
    model = _model()
    pack_linears(model)
    with torch.no_grad():
        x = torch.randn(4, 256)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model[0](x)
            expected = F.linear(x, model[0].weight, model[0].bias)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, expected)


@pytest.mark.skipif(
    not packed_linear.available(torch.bfloat16), reason="no oneDNN bf16 packed linear here"
)
def test_bf16_weights_are_packed_outside_autocast_and_under_a_bf16_one() -> None:
    """Where the CPU computes bf16, weights stored in it are packed too; the product is
    what ``F.linear`` computes in bf16 (autocast casts the input and returns bf16)."""
    model = _model().to(torch.bfloat16)
    x = torch.randn(3, 7, 256)
    with torch.no_grad():
        plain = F.linear(x.bfloat16(), model[0].weight, model[0].bias)
        pack_linears(model)
        assert packed_bytes(model) == (256 * 512 + 512 * 256) * 2
        got = model[0](x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model[0](x)
    assert got.dtype == autocast.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), plain.float(), rtol=2e-2, atol=2e-2)
    assert torch.equal(autocast, got)


def test_a_row_sliced_from_a_longer_batch_gives_its_own_product() -> None:
    """The last position of each row, as a causal LM's head takes it: a strided view."""
    model = _model()
    pack_linears(model)
    batch = torch.randn(4, 9, 256)
    with torch.no_grad():
        for rows in (batch[:, -1:, :], batch[:1, -1:, :]):
            expected = F.linear(rows.contiguous(), model[0].weight, model[0].bias)
            torch.testing.assert_close(model[0](rows), expected, rtol=1e-4, atol=1e-4)


def test_the_context_unpacks_only_what_it_packed() -> None:
    model = _model()
    pack_linears(model[:1])  # packed for good, as the server does
    with packed_linears(model):
        assert _packed_of(model[2]) is not None
        assert packed_bytes(model) == (256 * 512 + 512 * 256) * 4
    assert _packed_of(model[2]) is None
    assert packed_bytes(model) == 256 * 512 * 4
    assert _packed_of(model[0]) is not None


def test_a_peft_lora_model_generates_the_same_with_packed_layers(tiny_model) -> None:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(tiny_model, config)
    model.eval()
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with packed_linears(model):
            packed = {n for n, m in model.named_modules() if _packed_of(m) is not None}
            got = model(input_ids=ids).logits
            tokens = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
        plain = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    layer = "base_model.model.model.layers.0.self_attn"
    assert f"{layer}.q_proj.base_layer" in packed and f"{layer}.k_proj" in packed
    assert not any("lora_" in name for name in packed)  # adapters' products stay plain
    assert not any(_packed_of(m) for m in model.modules())  # unpacked on the way out
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert torch.equal(tokens, plain)


def test_the_probe_answers_the_same_when_first_asked_under_inference_mode() -> None:
    """Evaluation generates under inference mode, and may be the first to ask."""
    packed_linear._probe.cache_clear()
    model = _model()
    with torch.inference_mode():
        assert packed_linear.available()
        with packed_linears(model):
            assert _packed_of(model[0]) is not None
        made_here = _model()  # its weights keep no version counter: left plain
        with packed_linears(made_here):
            assert _packed_of(made_here[0]) is None
