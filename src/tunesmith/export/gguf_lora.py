"""`--to gguf-lora`: the adapter alone, for `llama-server --lora` and Ollama's ADAPTER, and
the bases it can sit on, each measured against training.

The bundled base is itself a Q4_1 GGUF that training saw dequantized to fp32. llama.cpp's
Q4_1 kernels quantize activations too, so the adapter on the shipped file is not the model
that was trained; it is measured next to an F16 (or the chosen quant) export of the same
base, and the summary says which one reproduces training.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from torch import nn

from tunesmith.export.errors import ExportError
from tunesmith.export.gguf_export import check, write_gguf
from tunesmith.export.gguf_model import write_header
from tunesmith.export.llama_layout import gguf_name, rope_heads, rope_rows_to_pairs
from tunesmith.export.prepare import ExportInputs, bundled_base_gguf
from tunesmith.export.quants import Quant
from tunesmith.export.result import Artifact, ExportResult
from tunesmith.export.source import staged_file

ADAPTER = "default"
ADAPTER_ROLE = "LoRA adapter"


def _refuse(why: str) -> ExportError:
    return ExportError(
        f"llama.cpp cannot take this adapter as a GGUF LoRA: {why}. Export the merged model "
        "instead: tunesmith export RUN_DIR --to gguf"
    )


def lora_layers(model: nn.Module, method: str) -> list[tuple[str, LoraLayer]]:
    """The adapter's LoRA layers, or a refusal naming what llama.cpp could not apply."""
    config = getattr(model, "peft_config", {}).get(ADAPTER)
    if not isinstance(config, LoraConfig):
        raise _refuse(f"the run was trained with method {method!r}, not LoRA")
    if getattr(config, "modules_to_save", None):
        raise _refuse(f"it trains whole modules too (modules_to_save: {config.modules_to_save})")
    if getattr(config, "use_dora", False):
        raise _refuse("it is DoRA (a learned magnitude llama.cpp does not apply)")
    if getattr(config, "bias", "none") != "none":
        raise _refuse(f"it trains biases (bias: {config.bias})")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, _ in layers:
        if name.endswith(("lm_head", "embed_tokens")):
            raise _refuse(f"it adapts {name.rsplit('.', 1)[-1]} (tied to the embeddings)")
    return layers


def adapter_tensors(
    layers: list[tuple[str, LoraLayer]], inputs: ExportInputs, alpha: float
) -> list[tuple[str, np.ndarray]]:
    """``….lora_a`` / ``….lora_b`` per layer. peft's scaling of each layer is folded into B
    relative to the single alpha llama.cpp applies (alpha / rank), so rsLoRA and per-module
    alpha or rank patterns come out exact; Q/K rows are reordered for llama.cpp's rope."""
    tensors = []
    for name, layer in layers:
        hf_name = name.removeprefix("base_model.model.") + ".weight"
        down = layer.lora_A[ADAPTER].weight.detach().float()
        up = layer.lora_B[ADAPTER].weight.detach().float()
        rank = down.shape[0]
        up = up * (layer.scaling[ADAPTER] / (alpha / rank))
        up_array = up.numpy()
        heads = rope_heads(hf_name, inputs.shape)
        if heads is not None:
            up_array = rope_rows_to_pairs(up_array, heads)
        base = gguf_name(hf_name)
        tensors.append((f"{base}.lora_a", np.ascontiguousarray(down.numpy())))
        tensors.append((f"{base}.lora_b", np.ascontiguousarray(up_array, dtype=np.float32)))
    return tensors


def write_gguf_lora(inputs: ExportInputs, target: Path) -> Path:
    config = inputs.source.config
    model = inputs.trained.model
    layers = lora_layers(model, config.method.name)
    alpha = float(model.peft_config[ADAPTER].lora_alpha)
    with staged_file(target) as staging:
        writer = gguf.GGUFWriter(staging, "llama")
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        write_header(writer, inputs.provenance("LoRA adapter"), inputs.chat, None)
        for name, array in adapter_tensors(layers, inputs, alpha):
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target


def export_gguf_lora(inputs: ExportInputs, quant: Quant, *, verify_items: int) -> ExportResult:
    source = inputs.source
    out_dir = source.out_dir("gguf-lora")
    result = ExportResult("gguf-lora", out_dir)
    adapter = write_gguf_lora(inputs, out_dir / f"{source.name}-lora.gguf")
    result.artifacts.append(Artifact(adapter, ADAPTER_ROLE))
    bases: list[tuple[str, Path]] = []
    shipped = bundled_base_gguf(inputs.model_name)
    if shipped is not None:
        bases.append((f"shipped {shipped.name}", shipped))
    exported = write_gguf(
        inputs, quant, out_dir / f"base-{quant.name}.gguf", result.notes, merged=False
    )
    result.artifacts.append(Artifact(exported, "base"))
    bases.append((f"exported base {quant.name}", exported))
    if verify_items:
        _verify_bases(inputs, quant, verify_items, adapter, bases, result)
    for label, path in bases:
        result.notes.append(f"llama-server -m {path} --lora {adapter}   # base: {label}")
    return result


def _verify_bases(
    inputs: ExportInputs,
    quant: Quant,
    items: int,
    adapter: Path,
    bases: list[tuple[str, Path]],
    result: ExportResult,
) -> None:
    held_out = inputs.held_out(items)
    ref = inputs.reference(held_out)
    scores = []
    for label, path in bases:
        inputs.say(f"checking the adapter on the {label} in llama.cpp")
        verification = inputs.verify(path, held_out, ref, lora=adapter)
        entry = {"base": str(path), **verification.as_dict()}
        artifact = next((a for a in result.artifacts if a.path == path), None)
        if artifact is None:
            result.artifacts.append(Artifact(path, "base (shipped, not copied)", entry))
        else:
            artifact.verification = entry
        scores.append((verification.identical_share, verification.top1_agreement, label))
        if "shipped" not in label:
            check(verification, quant, result, f"{adapter.name} on {path.name}")
    best = max(scores)
    result.notes.append(
        f"closest to training: the adapter on the {best[2]} ({best[0]:.0%} of greedy replies "
        f"identical to transformers, top-1 agreement {best[1]:.1%})"
    )
