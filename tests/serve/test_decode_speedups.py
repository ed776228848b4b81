"""The decode-step speedups change no product: adapters picked by row slices compute what
peft's ``adapter_names`` computes, and linear weights stored in the compute dtype give the
logits autocast gives over fp32 weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from tunesmith.evaluate.generate import left_padded
from tunesmith.models.autocast_paths import store_frozen_linears_in
from tunesmith.models.precision import Precision
from tunesmith.serve import grouped_lora
from tunesmith.serve.registry import BASE_ROW, Registry

FP32 = Precision(weights=torch.float32, compute=torch.float32, reason="test")
BF16 = Precision(weights=torch.float32, compute=torch.bfloat16, reason="test")
ROWS = [[5, 9, 13, 7], [11, 4], [6, 8, 10], [12, 5, 5, 9, 4], [7], [9, 9, 14]]


def _logits(model, names: list[str], precision: Precision, *, grouped: bool) -> torch.Tensor:
    input_ids, mask = left_padded(ROWS, pad_id=3)
    inputs = {"input_ids": input_ids, "attention_mask": mask}
    with torch.inference_mode(), precision.autocast(torch.device("cpu")):
        if grouped:
            with grouped_lora.grouped(model, grouped_lora.segments_of(names)):
                return model(**inputs).logits.float()
        return model(**inputs, adapter_names=names).logits.float()


def _two_adapters(serve_base_dir: Path, tiny_runs: list[Path]) -> PeftModel:
    base = AutoModelForCausalLM.from_pretrained(serve_base_dir)
    model = PeftModel.from_pretrained(base, tiny_runs[0] / "final", adapter_name="alpha")
    model.load_adapter(tiny_runs[1] / "final", adapter_name="beta")
    assert grouped_lora.install(model.eval())
    return model


@pytest.mark.parametrize("precision", [FP32, BF16], ids=["fp32", "bf16"])
def test_row_slices_compute_what_peft_mixed_batches_compute(
    serve_base_dir, tiny_runs, precision
) -> None:
    model = _two_adapters(serve_base_dir, tiny_runs)
    names = ["alpha", "alpha", BASE_ROW, "beta", "beta", "beta"]  # grouped, as the batch keeps
    ours = _logits(model, names, precision, grouped=True)
    peft = _logits(model, names, precision, grouped=False)
    assert torch.equal(ours, peft)
    # and the adapters are really in effect: each row's logits differ from the base's
    base = _logits(model, [BASE_ROW] * len(names), precision, grouped=True)
    assert not torch.equal(ours[0], base[0]) and not torch.equal(ours[3], base[3])
    assert torch.equal(ours[2], base[2])


def test_an_adapter_loaded_again_under_its_name_is_stacked_again(serve_base_dir, tiny_runs) -> None:
    model = _two_adapters(serve_base_dir, tiny_runs)
    names = ["alpha", "alpha", BASE_ROW, "beta", "beta", "beta"]
    before = _logits(model, names, FP32, grouped=True)  # alpha's and beta's weights stacked
    model.delete_adapter("beta")
    model.load_adapter(tiny_runs[0] / "final", adapter_name="beta")  # alpha's weights now
    grouped_lora.install(model)
    ours = _logits(model, names, FP32, grouped=True)
    assert torch.equal(ours, _logits(model, names, FP32, grouped=False))
    as_alpha = _logits(model, ["alpha", "alpha", BASE_ROW, "alpha", "alpha", "alpha"], FP32,
                       grouped=True)  # fmt: skip
    assert torch.equal(ours[3:], as_alpha[3:]) and not torch.equal(ours[3:], before[3:])


def test_the_registry_serves_shared_bases_through_row_slices(tiny_runs) -> None:
    registry = Registry(device="cpu")
    for run in tiny_runs:
        registry.add(run)
    assert grouped_lora.installed(registry.models["alpha"].module)


def test_segments_are_runs_of_one_adapter() -> None:
    names = ["a", "a", "__base__", "b", "b", "b"]
    assert grouped_lora.segments_of(names) == [("a", 0, 2), ("__base__", 2, 3), ("b", 3, 6)]


def test_a_model_with_modules_to_save_keeps_peft_mixing(serve_base_dir: Path) -> None:
    base = AutoModelForCausalLM.from_pretrained(serve_base_dir)
    config = LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    model = get_peft_model(base, config)
    assert not grouped_lora.install(model)
    assert not grouped_lora.installed(model)
    assert not any("forward" in vars(module) for module in model.modules())


def test_linears_in_compute_dtype_give_autocast_logits(serve_base_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(serve_base_dir).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as SmolLM2
    stored = copy.deepcopy(model).requires_grad_(False)  # as the registry serves it
    converted = store_frozen_linears_in(stored, torch.bfloat16, copy_tied=True)
    assert converted == 2 * 7 + 1  # seven projections in each of 2 layers, and the head
    assert stored.model.embed_tokens.weight.dtype == torch.float32  # lookups stay fp32
    assert stored.lm_head.weight.dtype == torch.bfloat16
    assert stored.model.norm.weight.dtype == torch.float32
    input_ids, mask = left_padded(ROWS, pad_id=3)
    with torch.inference_mode(), BF16.autocast(torch.device("cpu")):
        expected = model(input_ids=input_ids, attention_mask=mask).logits
        got = stored(input_ids=input_ids, attention_mask=mask).logits
    assert torch.equal(got, expected)
    assert store_frozen_linears_in(stored, torch.bfloat16, copy_tied=True) == 0  # idempotent
    fp32 = copy.deepcopy(model).requires_grad_(False)
    assert store_frozen_linears_in(fp32, torch.float32, copy_tied=True) == 0  # already fp32
