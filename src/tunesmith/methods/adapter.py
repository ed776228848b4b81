"""Bottleneck adapters (Houlsby et al., 2019): small trained layers after attention and MLP.

Each decoder block gets two adapters, one on the output of the attention
(`self_attn.o_proj`) and one on the output of the MLP (`mlp.down_proj`), before
the residual addition, as in Houlsby's placement:

    adapter(h) = h + up(activation(down(h)))      down: hidden -> adapter_size
                                                  up:   adapter_size -> hidden, zero at start

Because `up` starts at zero the adapted model is exactly the base model until
training moves it. The adapters are child modules of the projection they follow
(so they show in `print(model)`, `parameters()` and `state_dict()`), applied by a
forward hook; no transformers class is patched and the base weights keep their
names. The projections have no bias, which keeps the linear case foldable into
the base without changing the model's architecture.

Default activation: SiLU, the nonlinearity of the Houlsby configuration in
AdapterHub and of the LLaMA MLP. A nonlinear bottleneck is the reason to pick
adapters over LoRA, but it cannot be folded into the existing linear weights,
so no plain transformers model computes the same function: `merge` refuses with
an explanation. With `method.adapter_activation: linear` the adapter is the
linear map (I + up·down) after the projection W, and `merge` replaces W by
(I + up·down)·W exactly. That is why `mergeable` is False for the method as a
whole while `merge` succeeds for linear adapters.

Artifact: `adapter_model.safetensors` (adapter weights under their full module
names) + `tunesmith_adapter.json` (size, activation, placement). The format is
ours because peft has no bottleneck adapters; `load` restores it onto a fresh base.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from tunesmith.methods._blocks import decoder_layers
from tunesmith.methods.base import MethodError, MethodSettings
from tunesmith.methods.registry import register

ADAPTER_CONFIG_FILE = "tunesmith_adapter.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
ADAPTER_FORMAT = "tunesmith-bottleneck-adapter"
ADAPTER_FORMAT_VERSION = 1
ADAPTED_PROJECTIONS = ("self_attn.o_proj", "mlp.down_proj")
_CHILD_NAME = "bottleneck_adapter"


class AdapterSettings(MethodSettings):
    name: Literal["adapter"] = "adapter"
    adapter_size: int = Field(64, ge=1, description="Bottleneck width.")
    adapter_activation: Literal["silu", "gelu", "relu", "linear"] = Field(
        "silu",
        description="Bottleneck nonlinearity. 'linear' is less expressive but merges exactly "
        "into the base weights (export to GGUF/vLLM needs a merge).",
    )


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "linear": nn.Identity,
}


class BottleneckAdapter(nn.Module):
    """h + up(activation(down(h))); `up` starts at zero so the adapter starts as the identity."""

    def __init__(self, width: int, size: int, activation: str, like: torch.Tensor) -> None:
        super().__init__()
        self.activation_name = activation
        self.down = nn.Linear(width, size, bias=False, dtype=like.dtype, device=like.device)
        self.activation = _ACTIVATIONS[activation]()
        self.up = nn.Linear(size, width, bias=False, dtype=like.dtype, device=like.device)
        nn.init.zeros_(self.up.weight)
        self.hook: RemovableHandle | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.up(self.activation(self.down(hidden)))


def _apply_child_adapter(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
    return getattr(module, _CHILD_NAME)(output)


class BottleneckAdapters:
    name = "adapter"
    settings = AdapterSettings
    # Adapter layers start at zero and need a larger step than full fine-tuning (AdapterHub: 1e-4).
    default_learning_rate = 1e-4
    artifact = "bottleneck-adapter"
    mergeable = False
    packs = True
    shardable = True
    switches_off = False

    def base_load_options(self, settings: AdapterSettings) -> dict[str, object]:
        return {}

    def attach(self, model: PreTrainedModel, settings: AdapterSettings) -> nn.Module:
        model.requires_grad_(False)
        for projection in _adapted_projections(model):
            if hasattr(projection, _CHILD_NAME):
                raise MethodError("adapter layers are already attached to this model.")
            adapter = BottleneckAdapter(
                projection.out_features,
                settings.adapter_size,
                settings.adapter_activation,
                like=projection.weight,
            )
            projection.add_module(_CHILD_NAME, adapter)
            adapter.hook = projection.register_forward_hook(_apply_child_adapter)
        return model

    def save(self, model: nn.Module, out_dir: Path) -> None:
        adapters = _attached_adapters(model)
        first = next(iter(adapters.values()))
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{module_name}.{key}": value.detach().contiguous()
            for module_name, adapter in adapters.items()
            for key, value in adapter.state_dict().items()
        }
        save_file(tensors, out_dir / ADAPTER_WEIGHTS_FILE, metadata={"format": "pt"})
        description = {
            "format": ADAPTER_FORMAT,
            "format_version": ADAPTER_FORMAT_VERSION,
            "base_model_name_or_path": getattr(model, "name_or_path", ""),
            "adapter_size": first.down.out_features,
            "adapter_activation": first.activation_name,
            "adapted_projections": list(ADAPTED_PROJECTIONS),
        }
        (out_dir / ADAPTER_CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n")

    def load(self, base: PreTrainedModel, artifact_dir: Path) -> nn.Module:
        description = _read_description(artifact_dir)
        try:
            settings = AdapterSettings(
                adapter_size=description.get("adapter_size"),
                adapter_activation=description.get("adapter_activation"),
            )
        except ValidationError as error:
            problem = error.errors()[0]
            raise MethodError(
                f"{artifact_dir / ADAPTER_CONFIG_FILE}: {problem['loc'][0]} {problem['msg']} "
                f"(got {problem['input']!r}). Re-save the adapter with tunesmith."
            ) from None
        weights_path = artifact_dir / ADAPTER_WEIGHTS_FILE
        tensors = load_file(weights_path, device=str(base.device))
        expected = _expected_shapes(base, settings.adapter_size)
        found = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
        if found != expected:
            wrong = sorted(set(found) ^ set(expected)) or sorted(
                name for name in expected if found[name] != expected[name]
            )
            raise MethodError(
                f"{weights_path}: the adapter weights do not fit this base model (first "
                f"mismatches: {wrong[:3]}). Load it onto the base model it was trained on."
            )
        model = self.attach(base, settings)
        model.load_state_dict(tensors, strict=False)
        return model

    def merge(self, model: nn.Module) -> PreTrainedModel:
        """Fold linear adapters into the projection they follow; the result is a plain model."""
        adapters = _attached_adapters(model)
        nonlinear = {adapter.activation_name for adapter in adapters.values()} - {"linear"}
        if nonlinear:
            raise MethodError(
                f"adapter layers with a {', '.join(sorted(nonlinear))} bottleneck cannot be "
                "merged: the nonlinearity cannot be folded into the model's linear weights, so "
                "no plain transformers model computes the same function. Use the adapter dir "
                "with tunesmith, or retrain with method.adapter_activation: linear to get a "
                "mergeable adapter."
            )
        if not isinstance(model, PreTrainedModel):
            raise MethodError(
                f"expected a transformers model to merge, got {type(model).__name__}."
            )
        for module_name in adapters:
            projection = model.get_submodule(module_name.removesuffix(f".{_CHILD_NAME}"))
            _fold_linear_adapter(projection)
        return model


def _adapted_projections(model: PreTrainedModel) -> list[nn.Linear]:
    projections = []
    for layer in decoder_layers(model, "adapter"):
        for path in ADAPTED_PROJECTIONS:
            try:
                projection = layer.get_submodule(path)
            except AttributeError:
                projection = None
            if type(projection) is not nn.Linear:
                raise MethodError(
                    f"adapter layers go after {' and '.join(ADAPTED_PROJECTIONS)} of each "
                    f"block (LLaMA-style, full precision); {type(model).__name__} has "
                    f"{type(projection).__name__} at {path}. Use method.name: lora instead."
                )
            projections.append(projection)
    return projections


def _expected_shapes(model: PreTrainedModel, size: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes the adapter weights must have on this model, before attaching."""
    names = {id(module): name for name, module in model.named_modules()}
    shapes: dict[str, tuple[int, ...]] = {}
    for projection in _adapted_projections(model):
        prefix = f"{names[id(projection)]}.{_CHILD_NAME}"
        shapes[f"{prefix}.down.weight"] = (size, projection.out_features)
        shapes[f"{prefix}.up.weight"] = (projection.out_features, size)
    return shapes


def _attached_adapters(model: nn.Module) -> dict[str, BottleneckAdapter]:
    adapters = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, BottleneckAdapter)
    }
    if not adapters:
        raise MethodError("this model has no adapter layers; attach them with method 'adapter'.")
    return adapters


def _fold_linear_adapter(projection: nn.Linear) -> None:
    """W <- (I + up·down)·W (and the bias likewise), then drop the adapter and its hook."""
    adapter: BottleneckAdapter = getattr(projection, _CHILD_NAME)
    with torch.no_grad():
        weight = projection.weight.to(torch.float64)
        update = adapter.up.weight.to(torch.float64) @ adapter.down.weight.to(torch.float64)
        projection.weight.copy_(weight + update @ weight)
        if projection.bias is not None:
            bias = projection.bias.to(torch.float64)
            projection.bias.copy_(bias + update @ bias)
    if adapter.hook is not None:
        adapter.hook.remove()
    delattr(projection, _CHILD_NAME)


def _read_description(artifact_dir: Path) -> dict[str, Any]:
    path = artifact_dir / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise MethodError(
            f"{path}: not found. An 'adapter' artifact is {ADAPTER_CONFIG_FILE} + "
            f"{ADAPTER_WEIGHTS_FILE}, as written by tunesmith; point at that directory."
        )
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise MethodError(f"{path}:{error.lineno}: not valid JSON ({error.msg}).") from None
    if not isinstance(description, dict):
        raise MethodError(f"{path}: expected a JSON object describing the adapter.")
    if description.get("format") != ADAPTER_FORMAT:
        raise MethodError(
            f"{path}: 'format' is {description.get('format')!r}, expected {ADAPTER_FORMAT!r}."
        )
    if description.get("format_version") != ADAPTER_FORMAT_VERSION:
        raise MethodError(
            f"{path}: format_version {description.get('format_version')!r} is not supported; "
            f"this tunesmith reads version {ADAPTER_FORMAT_VERSION}."
        )
    if description.get("adapted_projections") != list(ADAPTED_PROJECTIONS):
        raise MethodError(
            f"{path}: 'adapted_projections' is {description.get('adapted_projections')!r}; "
            f"this tunesmith places adapters after {list(ADAPTED_PROJECTIONS)}."
        )
    return description


register(BottleneckAdapters())
