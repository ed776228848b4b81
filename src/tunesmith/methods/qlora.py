"""QLoRA: LoRA in full precision on a base whose linear weights are stored in 4-bit NF4.

The base is loaded through bitsandbytes (`base_load_options`), which cuts its
memory about 4x at the price of a small, fixed quantization error in every
weight. Computation runs in float32, on CPU and GPU alike.

On CPUs with AVX512-BF16, bitsandbytes switches a 4-bit layer to a bf16 kernel
the first time it runs in eval mode without gradients; that would make
evaluation disagree with training by ~1e-3 and rewrite the stored weights. We
keep every 4-bit layer on the float32 path, so train and eval compute the same
function and a merge reproduces it.

Merging dequantizes the 4-bit base into a float32 model and folds the LoRA
update in there, rather than adding it to the 4-bit weights (which would
re-quantize and lose most of the update). The merged model therefore computes
exactly what the QLoRA model computed (logits within ~1e-5, float rounding);
it differs from the original full-precision base by the NF4 quantization
error, which is what the adapter was trained against.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Literal

import torch
from peft import (
    get_peft_model,
    get_peft_model_state_dict,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from torch import nn
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PreTrainedModel

from tunesmith.methods import _peft
from tunesmith.methods.base import MethodError
from tunesmith.methods.lora import LoraSettings, attach_lora
from tunesmith.methods.registry import register


class QloraSettings(LoraSettings):
    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]


class QLoRA:
    name = "qlora"
    settings = QloraSettings
    default_learning_rate = 2e-4
    artifact = "peft-adapter"
    mergeable = True
    packs = True
    shardable = False
    switches_off = True

    def base_load_options(self, settings: QloraSettings) -> dict[str, object]:
        return {
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=torch.float32,
            )
        }

    def attach(self, model: PreTrainedModel, settings: QloraSettings) -> nn.Module:
        _require_4bit_base(model)
        _keep_float32_kernels(model)
        # Freezes the base and lifts any fp16/bf16 norms and embeddings to float32, the
        # compute dtype. Gradient checkpointing stays off here: train.gradient_checkpointing
        # decides it for every method alike.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return attach_lora(model, settings)

    def save(self, model: nn.Module, out_dir: Path) -> None:
        _peft.save_adapter(model, out_dir)

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        _require_4bit_base(base)
        _keep_float32_kernels(base)
        return _peft.load_adapter(base, artifact_dir)

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """A float32 model with the dequantized base weights and the LoRA update folded in."""
        adapted = _peft.require_peft_model(model, "merge")
        quantized_base = adapted.get_base_model()
        config = copy.deepcopy(quantized_base.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        merged_base = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        weights = _dequantized_base_weights(quantized_base)
        missing, unexpected = merged_base.load_state_dict(weights, strict=False)
        merged_base.tie_weights()
        untied_missing = set(missing) - _tied_parameter_names(merged_base)
        if untied_missing or unexpected:
            raise MethodError(
                "qlora merge could not rebuild the float32 base: missing "
                f"{sorted(untied_missing)}, unexpected {sorted(unexpected)}."
            )
        lora_config = copy.deepcopy(adapted.peft_config[adapted.active_adapter])
        float_adapted = get_peft_model(merged_base, lora_config)
        set_peft_model_state_dict(float_adapted, get_peft_model_state_dict(adapted))
        return float_adapted.merge_and_unload().eval()


def _require_4bit_base(model: PreTrainedModel) -> None:
    import bitsandbytes  # only a 4-bit run pays for it (and its import-time hub lookup)

    if not any(isinstance(module, bitsandbytes.nn.Linear4bit) for module in model.modules()):
        raise MethodError(
            "qlora needs the base model loaded in 4-bit: pass the method's "
            "base_load_options() to from_pretrained / load_base_model. For a full-precision "
            "base use method.name: lora."
        )


def _keep_float32_kernels(model: nn.Module) -> None:
    import bitsandbytes

    for module in model.modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _dequantized_base_weights(quantized_base: nn.Module) -> dict[str, torch.Tensor]:
    """Base weights in float32 under their original names (peft's wrappers and LoRA removed)."""
    import bitsandbytes

    weights: dict[str, torch.Tensor] = {}
    for module_name, module in quantized_base.named_modules():
        if ".lora_" in f".{module_name}":
            continue
        for tensor_name, tensor in module.named_parameters(recurse=False):
            if isinstance(tensor, bitsandbytes.nn.Params4bit):
                tensor = bitsandbytes.functional.dequantize_4bit(tensor.data, tensor.quant_state)
            name = f"{module_name}.{tensor_name}".replace(".base_layer", "")
            weights[name] = tensor.detach().to(torch.float32)
    return weights


def _tied_parameter_names(model: nn.Module) -> set[str]:
    """Names under which `named_parameters` skipped a tensor it already listed (tied weights)."""
    listed = {name for name, _ in model.named_parameters()}
    everything = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return everything - listed


register(QLoRA())
