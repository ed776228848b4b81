"""`--to vllm`: a LoRA adapter folder vLLM accepts and the exact `vllm serve` command, after
checking what vLLM requires of LoRA adapters; full fine-tunes go as the merged HF folder.

vLLM needs a GPU, so the proof here is the adapter folder reloaded by peft over the base
and compared with the evaluated model, plus vLLM's documented limits checked up front.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import torch
from peft import PeftModel

from tunesmith.evaluate.generate import prompt_token_ids
from tunesmith.export.errors import ExportError
from tunesmith.export.folders import staged_folder
from tunesmith.export.hf import export_hf
from tunesmith.export.prepare import ExportInputs
from tunesmith.export.result import Artifact, ExportResult
from tunesmith.manifest import write_manifest
from tunesmith.models import load_base_model

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM's --max-lora-rank accepts; an adapter's rank must not exceed it."""
VLLM_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def check_vllm_adapter(config: dict) -> int:
    """The --max-lora-rank to pass; ExportError naming what vLLM would refuse."""
    problems = []
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']} (vLLM loads LoRA weights only)"
        )
    if config.get("use_dora"):
        problems.append("DoRA (vLLM serves plain LoRA)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias: {config['bias']}")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unsupported = sorted({t.rsplit(".", 1)[-1] for t in targets} - VLLM_LORA_MODULES)
    if unsupported:
        problems.append(f"target modules {unsupported} outside {sorted(VLLM_LORA_MODULES)}")
    ranks = [config.get("r", 8), *(config.get("rank_pattern") or {}).values()]
    rank = max(ranks)
    if rank > VLLM_LORA_RANKS[-1]:
        problems.append(f"rank {rank} above vLLM's largest --max-lora-rank {VLLM_LORA_RANKS[-1]}")
    if problems:
        raise ExportError(
            "vLLM cannot serve this adapter: " + "; ".join(problems) + ". Export the merged "
            "model instead (tunesmith export RUN_DIR --to hf) and serve that folder with vLLM."
        )
    return next(value for value in VLLM_LORA_RANKS if value >= rank)


def serve_command(base: str, name: str, adapter: Path, max_rank: int) -> str:
    module = json.dumps({"name": name, "path": str(adapter), "base_model_name": base})
    return (
        f"vllm serve {shlex.quote(base)} --enable-lora --max-lora-rank {max_rank} "
        f"--lora-modules {shlex.quote(module)}"
    )


@torch.inference_mode()
def _reload_check(inputs: ExportInputs, adapter: Path, items: int) -> dict[str, float | int]:
    config = inputs.source.config
    base = load_base_model(config.model.name, device=torch.device("cpu"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base.model, adapter).eval()
    prompts = inputs.held_out(items).prompts
    delta = 0.0
    for prompt in prompts:
        batch = torch.tensor([prompt_token_ids(inputs.tokenizer, prompt)])
        difference = model(input_ids=batch).logits - inputs.merged(input_ids=batch).logits
        delta = max(delta, float(difference.abs().max()))
    return {"prompts": len(prompts), "max_abs_logit_delta": delta}


def export_vllm(inputs: ExportInputs, *, verify_items: int) -> ExportResult:
    source = inputs.source
    final = source.paths.final
    if not (final / "adapter_config.json").is_file():
        hf = export_hf(inputs, verify_items=verify_items)
        hf.target = "vllm"
        hf.notes = [f"vllm serve {shlex.quote(str(hf.out_dir))}   # a full model: no adapter"]
        return hf
    adapter_config = json.loads((final / "adapter_config.json").read_text(encoding="utf-8"))
    max_rank = check_vllm_adapter(adapter_config)
    base = str(inputs.trained.model.peft_config["default"].base_model_name_or_path)
    out_dir = source.out_dir("vllm")
    with staged_folder(out_dir) as staging:
        for name in ADAPTER_FILES:
            shutil.copy2(final / name, staging / name)
        write_manifest(staging, "manifest.json")
    command = serve_command(base, source.name, out_dir, max_rank)
    (out_dir / "serve.sh").write_text(f"#!/bin/sh\nexec {command}\n", encoding="utf-8")
    artifact = Artifact(out_dir, "LoRA adapter folder")
    result = ExportResult("vllm", out_dir, artifacts=[artifact], notes=[command])
    if verify_items:
        artifact.verification = _reload_check(inputs, out_dir, verify_items)
    return result
