"""Parameter memory from the model's config on the meta device: no weight is loaded.

The method is attached to the meta model, so the trainable set is the method's real one
(peft decides which modules LoRA wraps, prefix tuning its prompt encoder). QLoRA stores
only the linear layers of the decoder in NF4; embeddings, `lm_head` and norms stay in the
run's weight dtype, which is what makes "size / 8" badly wrong for small models.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from tunesmith.config import RunConfig
from tunesmith.methods import get_method
from tunesmith.models.autocast_paths import store_frozen_linears_in
from tunesmith.objectives import Objective, attach_objective_parameters

NF4_BYTES_PER_PARAM = 0.5 + 4 / 64
"""Two 4-bit values per byte plus one fp32 absmax per block of 64 (bitsandbytes' default
blocksize; tunesmith's QLoRA does not double-quantize the absmax constants)."""

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class ParameterMemory:
    """Where the parameters of the trained model sit, in bytes and counts."""

    total_params: int
    trainable_params: int
    layers: int
    frozen_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    trainable_bytes: int = 0
    trainable_element_size: int = 4
    quantized_params: int = 0
    """Weights stored in NF4 (QLoRA's decoder linears; 0 for every other method)."""
    quantized_source_element_size: int = 4
    """Bytes per parameter of those weights in the checkpoint file they are quantized from."""
    dequantized_element_size: int = 4
    """Bytes per parameter of the copies bitsandbytes dequantizes them to (compute dtype)."""

    @property
    def frozen_bytes(self) -> int:
        return sum(self.frozen_bytes_by_dtype.values())


def probe_method_name(method_name: str) -> str:
    """The method whose trainable set and activations stand for ``method_name`` off its
    real kernels: QLoRA trains exactly LoRA's parameters, on a 4-bit base."""
    return "lora" if method_name == "qlora" else method_name


def load_model_config(path: str, *, trust_remote_code: bool) -> PretrainedConfig:
    return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def layer_count(model_config: PretrainedConfig) -> int:
    return int(model_config.num_hidden_layers)


def parameter_memory(
    run: RunConfig,
    model_config: PretrainedConfig,
    objective: Objective,
    *,
    weights_dtype: torch.dtype,
    frozen_linears_dtype: torch.dtype | None = None,
) -> ParameterMemory:
    """Counts and bytes of the run's trained model, built on the meta device; with
    ``frozen_linears_dtype``, its frozen linear weights stored in that dtype as training
    stores them (`store_frozen_linears_in`)."""
    source, dequantized = _quantized_element_sizes(run, model_config, weights_dtype)
    with torch.device("meta"):  # on a copy: from_config sets the config's dtype to the one built
        base = AutoModelForCausalLM.from_config(
            copy.deepcopy(model_config),
            dtype=weights_dtype,
            trust_remote_code=run.model.trust_remote_code,
        )
        model = attach_method(base, run)
        attach_objective_parameters(objective, model)
        if frozen_linears_dtype is not None:
            store_frozen_linears_in(model, frozen_linears_dtype)
    quantized = nf4_parameter_ids(base) if run.method.name == "qlora" else set()
    frozen: dict[str, int] = {}
    trainable = total = trainable_bytes = quantized_count = 0
    element_size = torch.tensor([], dtype=weights_dtype).element_size()
    seen: set[int] = set()
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        count = parameter.numel()
        total += count
        if parameter.requires_grad:
            trainable += count
            trainable_bytes += count * parameter.element_size()
            element_size = parameter.element_size()
        elif id(parameter) in quantized:
            quantized_count += count
            frozen["nf4"] = frozen.get("nf4", 0) + round(count * NF4_BYTES_PER_PARAM)
        else:
            name = _DTYPE_NAMES.get(parameter.dtype, str(parameter.dtype))
            frozen[name] = frozen.get(name, 0) + count * parameter.element_size()
    return ParameterMemory(
        total, trainable, layer_count(model_config), frozen, trainable_bytes, element_size,
        quantized_params=quantized_count,
        quantized_source_element_size=source, dequantized_element_size=dequantized,
    )  # fmt: skip


def _quantized_element_sizes(
    run: RunConfig, model_config: PretrainedConfig, weights_dtype: torch.dtype
) -> tuple[int, int]:
    """Element sizes of the 4-bit weights' source (the checkpoint's dtype, as its config
    records it) and of their dequantized copies (the method's compute dtype)."""
    stored = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    source = stored if isinstance(stored, torch.dtype) else weights_dtype
    quantization = (
        get_method(run.method.name).base_load_options(run.method).get("quantization_config")
    )
    compute = getattr(quantization, "bnb_4bit_compute_dtype", None) or weights_dtype
    if isinstance(compute, str):
        compute = getattr(torch, compute)
    return _element_size(source), _element_size(compute)


def _element_size(dtype: torch.dtype) -> int:
    return torch.tensor([], dtype=dtype).element_size()


def attach_method(base: nn.Module, run: RunConfig) -> nn.Module:
    """``base`` with the run's method attached (LoRA's for QLoRA: same trainable set)."""
    name = probe_method_name(run.method.name)
    settings = run.method
    if name != run.method.name:
        settings = get_method(name).settings(**{**run.method.model_dump(), "name": name})
    return get_method(name).attach(base, settings)


def nf4_parameter_ids(base: nn.Module) -> set[int]:
    """Weights bitsandbytes would store in NF4: those of nn.Linear layers, except the
    output head (transformers keeps it, and anything tied to it, unquantized)."""
    head = base.get_output_embeddings()
    kept = {id(p) for p in head.parameters()} if head is not None else set()
    return {
        id(module.weight)
        for module in base.modules()
        if isinstance(module, nn.Linear) and id(module.weight) not in kept
    }
