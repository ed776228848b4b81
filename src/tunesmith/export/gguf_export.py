"""`--to gguf`: the merged model as one GGUF file, then proven in llama.cpp."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tunesmith.export.gguf_model import write_model_gguf
from tunesmith.export.prepare import ExportInputs
from tunesmith.export.quants import Quant, requantize_with_llama_cpp
from tunesmith.export.result import Artifact, ExportResult
from tunesmith.export.source import staged_file
from tunesmith.export.verify import Verification
from tunesmith.runs import base_model_of

F16_IDENTICAL_SHARE = 0.95
"""An F16 file must give transformers' greedy reply on at least this share of prompts."""
METRIC_MARGIN = 0.02
"""A quant that loses more than this (absolute, 0-1 metrics) of the task metric is named."""


def write_gguf(
    inputs: ExportInputs, quant: Quant, target: Path, notes: list[str], *, merged: bool = True
) -> Path:
    """The merged model (or, with ``merged=False``, the untrained base) at ``target``; what
    llama.cpp's quantizer had to tell is appended to ``notes``."""
    if merged:
        return _write(inputs, quant, target, inputs.merged.state_dict(), "merged", notes)
    with base_model_of(inputs.trained) as base:
        return _write(inputs, quant, target, plain_state(base), "base", notes)


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's own weights under transformers' names, also when peft wraps it (its adapter
    switched off, as `base_model_of` hands it): the base layers, no adapter tensors."""
    state = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        state[name.removeprefix("base_model.model.").replace(".base_layer.", ".")] = tensor
    return state


def _write(
    inputs: ExportInputs,
    quant: Quant,
    target: Path,
    state: dict[str, torch.Tensor],
    kind: str,
    notes: list[str],
) -> Path:
    inputs.say(f"writing {target.name} ({kind}, {quant.name})")

    def write(path: Path) -> None:
        write_model_gguf(
            path,
            state.items(),
            inputs.shape,
            quant,
            inputs.vocab,
            inputs.chat,
            inputs.provenance(kind),
        )

    with staged_file(target) as staging:
        if not quant.llama_cpp_quantizer:
            write(staging)
            return target
        half = staging.with_name(staging.name + ".f16")
        try:
            write(half)
            remark = requantize_with_llama_cpp(half, staging, quant)
            notes.extend([remark] if remark else [])
        finally:
            half.unlink(missing_ok=True)
    return target


def check(verification: Verification, quant: Quant, result: ExportResult, label: str) -> None:
    """Warnings for a file that does not reproduce training closely enough."""
    differing = verification.prompts - verification.tokenizer_identical
    if differing:
        result.warnings.append(
            f"{label}: llama.cpp tokenized {differing} of {verification.prompts} prompts "
            "differently from transformers."
        )
    if quant.name in ("f16", "f32") and verification.identical_share < F16_IDENTICAL_SHARE:
        result.warnings.append(
            f"{label}: only {verification.identical_share:.0%} of greedy replies equal "
            f"transformers' (expected ≥ {F16_IDENTICAL_SHARE:.0%} at {quant.name})."
        )
    loss = verification.metric_transformers - verification.metric_llama_cpp
    if loss > METRIC_MARGIN:
        result.warnings.append(
            f"{label}: {verification.metric} drops by {loss:.3f} against the unquantized model "
            f"({verification.metric_transformers:.3f} → {verification.metric_llama_cpp:.3f})."
        )


def export_gguf(
    inputs: ExportInputs,
    quants: list[Quant],
    *,
    verify_items: int,
    out_dir: Path | None = None,
) -> ExportResult:
    """One GGUF per quant, each verified against the same transformers reference."""
    out_dir = out_dir or inputs.source.out_dir("gguf")
    result = ExportResult("gguf", out_dir)
    held_out = inputs.held_out(verify_items) if verify_items else None
    ref = inputs.reference(held_out) if held_out else None
    for quant in quants:
        path = write_gguf(
            inputs, quant, out_dir / f"{inputs.source.name}-{quant.name}.gguf", result.notes
        )
        artifact = Artifact(path, f"model {quant.name}")
        result.artifacts.append(artifact)
        if held_out is not None and ref is not None:
            inputs.say(f"checking {path.name} in llama.cpp on {len(held_out.prompts)} prompts")
            verification = inputs.verify(path, held_out, ref)
            artifact.verification = verification.as_dict()
            check(verification, quant, result, path.name)
        result.notes.append(f"llama-cli -m {path} -cnv   # or: llama-server -m {path}")
    return result
