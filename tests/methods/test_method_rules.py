"""What individual methods promise beyond the shared matrix: starting points, refusals, layouts."""

from __future__ import annotations

import json
from pathlib import Path

import bitsandbytes
import pytest
import torch
from peft.tuners.lora import LoraLayer
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from tunesmith.config import RunConfig
from tunesmith.methods import METHODS, MethodError, count_parameters, get_method, method_settings
from tunesmith.methods.adapter import ADAPTER_CONFIG_FILE
from tunesmith.methods.prefix import prefix_token_ids


def test_the_config_accepts_every_registered_method_and_only_its_settings() -> None:
    for name, method in METHODS.items():
        config = RunConfig.model_validate({"method": {"name": name}})
        assert isinstance(config.method, method.settings)
    with pytest.raises(ValidationError, match="extra"):
        RunConfig.model_validate({"method": {"name": "ia3", "r": 64}})


def test_unknown_method_names_the_registered_ones() -> None:
    with pytest.raises(MethodError, match="available: adapter, dora, freeze, full"):
        get_method("loar")


def test_adapter_starts_as_the_identity(
    tiny_model: LlamaForCausalLM, memorisable_batch: dict[str, torch.Tensor]
) -> None:
    inputs = {"input_ids": memorisable_batch["input_ids"]}
    with torch.no_grad():
        before = tiny_model(**inputs).logits
        base_keys = set(tiny_model.state_dict())
        adapted = get_method("adapter").attach(tiny_model, method_settings(name="adapter"))
        after = adapted(**inputs).logits
    assert torch.equal(before, after)
    assert base_keys <= set(adapted.state_dict()), "base weights must keep their names"
    assert "bottleneck_adapter" in repr(adapted.model.layers[0].mlp.down_proj)


def test_adapter_changes_the_function_once_trained(
    tiny_model: LlamaForCausalLM, memorisable_batch: dict[str, torch.Tensor]
) -> None:
    with torch.no_grad():
        before = tiny_model(input_ids=memorisable_batch["input_ids"]).logits
        adapted = get_method("adapter").attach(tiny_model, method_settings(name="adapter"))
        adapted.model.layers[1].self_attn.o_proj.bottleneck_adapter.up.weight.fill_(0.1)
        after = adapted(input_ids=memorisable_batch["input_ids"]).logits
    assert not torch.allclose(before, after)


def test_nonlinear_adapter_refuses_to_merge_and_names_the_fix(tiny_model: LlamaForCausalLM) -> None:
    method = get_method("adapter")
    adapted = method.attach(tiny_model, method_settings(name="adapter", adapter_activation="gelu"))
    with pytest.raises(MethodError, match=r"gelu bottleneck cannot be merged.*activation: linear"):
        method.merge(adapted)


def test_adapter_cannot_be_attached_twice(tiny_model: LlamaForCausalLM) -> None:
    method = get_method("adapter")
    adapted = method.attach(tiny_model, method_settings(name="adapter"))
    with pytest.raises(MethodError, match="already attached"):
        method.attach(adapted, method_settings(name="adapter"))


def test_adapter_load_rejects_a_different_base(
    tiny_model: LlamaForCausalLM, pretrained_tiny64_dir: Path, tmp_path: Path
) -> None:
    method = get_method("adapter")
    method.save(method.attach(tiny_model, method_settings(name="adapter")), tmp_path)
    wider_base = AutoModelForCausalLM.from_pretrained(pretrained_tiny64_dir)
    with pytest.raises(MethodError, match="do not fit this base model"):
        method.load(wider_base, tmp_path)


def test_adapter_load_explains_a_bad_description(
    tiny_model: LlamaForCausalLM, tiny_model_dir: Path, tmp_path: Path
) -> None:
    method = get_method("adapter")
    method.save(method.attach(tiny_model, method_settings(name="adapter")), tmp_path)
    description_path = tmp_path / ADAPTER_CONFIG_FILE
    description = json.loads(description_path.read_text())
    assert description["adapter_activation"] == "silu" and description["adapter_size"] == 64
    description["adapter_activation"] = "tanh"
    description_path.write_text(json.dumps(description))
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(MethodError, match=f"{ADAPTER_CONFIG_FILE}: adapter_activation"):
        method.load(fresh, tmp_path)
    description_path.unlink()
    with pytest.raises(MethodError, match="not found"):
        method.load(fresh, tmp_path)


def test_freeze_trains_exactly_the_last_blocks(tiny_model: LlamaForCausalLM) -> None:
    settings = method_settings(name="freeze", trainable_layers=1)
    model = get_method("freeze").attach(tiny_model, settings)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("model.layers.1.") for name in trainable)
    assert len(trainable) == len(list(model.model.layers[1].parameters()))


@pytest.mark.parametrize(
    ("trainable_layers", "train_head", "message"),
    [(3, False, "has 2 blocks"), (0, False, "nothing would train")],
)
def test_freeze_refuses_settings_that_cannot_work(
    tiny_model: LlamaForCausalLM, trainable_layers: int, train_head: bool, message: str
) -> None:
    settings = method_settings(
        name="freeze", trainable_layers=trainable_layers, train_head=train_head
    )
    with pytest.raises(MethodError, match=message):
        get_method("freeze").attach(tiny_model, settings)


def test_qlora_needs_a_4bit_base(tiny_model: LlamaForCausalLM) -> None:
    with pytest.raises(MethodError, match="base_load_options"):
        get_method("qlora").attach(tiny_model, method_settings(name="qlora"))


def test_qlora_adapts_4bit_linear_layers(pretrained_tiny64_dir: Path) -> None:
    method = get_method("qlora")
    settings = method_settings(name="qlora")
    full_precision_total = count_parameters(
        AutoModelForCausalLM.from_pretrained(pretrained_tiny64_dir)
    )[1]
    base = AutoModelForCausalLM.from_pretrained(
        pretrained_tiny64_dir, **method.base_load_options(settings)
    )
    model = method.attach(base, settings)
    lora_layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(lora_layers) == 2 * 7
    assert all(isinstance(m.base_layer, bitsandbytes.nn.Linear4bit) for m in lora_layers)
    trainable, total = count_parameters(model)
    assert total == full_precision_total + trainable


def test_prefix_starts_as_the_base_models_own_states(
    pretrained_tiny_dir: Path, memorisable_batch: dict[str, torch.Tensor]
) -> None:
    """With the starting prefixes, the model reads any input as if prefix_token_ids preceded it."""
    settings = method_settings(name="prefix", num_virtual_tokens=5)
    base = AutoModelForCausalLM.from_pretrained(pretrained_tiny_dir).eval()
    text = memorisable_batch["input_ids"][:1, :6]
    prefix = prefix_token_ids(base.get_input_embeddings().num_embeddings, 5)
    with torch.no_grad():
        expected = base(input_ids=torch.cat([prefix, text], dim=1)).logits[:, 5:]
        adapted = get_method("prefix").attach(base, settings)
        observed = adapted(input_ids=text).logits
    torch.testing.assert_close(observed, expected, atol=1e-5, rtol=0)
