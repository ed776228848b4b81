"""`--to hf`: the merged model as a plain transformers folder with a model card and the
sha256 of every file, reloaded after writing to prove it is the model that was evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from tunesmith.evaluate.generate import prompt_token_ids
from tunesmith.export.folders import staged_folder
from tunesmith.export.model_card import model_card
from tunesmith.export.prepare import ExportInputs
from tunesmith.export.result import Artifact, ExportResult
from tunesmith.manifest import write_manifest

HF_MANIFEST = "manifest.json"


def _write_tokenizer(inputs: ExportInputs, folder: Path) -> None:
    """The tokenizer, with the chat template also inside tokenizer_config.json: readers that
    ignore `chat_template.jinja` (TGI, older llama.cpp forks) would otherwise lose it."""
    inputs.tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = inputs.chat.template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _generation_config(inputs: ExportInputs) -> GenerationConfig:
    """Greedy, stopping at every end-of-turn token: how evaluation decoded."""
    stops = list(inputs.chat.end_of_turn_ids)
    return GenerationConfig(
        do_sample=False,
        eos_token_id=stops if len(stops) > 1 else stops[0],
        pad_token_id=inputs.tokenizer.pad_token_id,
        bos_token_id=inputs.tokenizer.bos_token_id,
        max_new_tokens=inputs.source.config.eval.max_new_tokens,
    )


@torch.inference_mode()
def reload_check(inputs: ExportInputs, folder: Path, items: int) -> dict[str, float | int]:
    """Load the folder as a user would and compare ids and logits with the merged model."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = inputs.held_out(items).prompts
    identical, delta = 0, 0.0
    for prompt in prompts:
        ids = prompt_token_ids(inputs.tokenizer, prompt)
        identical += ids == prompt_token_ids(tokenizer, prompt)
        batch = torch.tensor([ids])
        difference = model(input_ids=batch).logits - inputs.merged(input_ids=batch).logits
        delta = max(delta, float(difference.abs().max()))
    return {"prompts": len(prompts), "tokenizer_identical": identical, "max_abs_logit_delta": delta}


def write_hf(inputs: ExportInputs, target: Path) -> Path:
    with staged_folder(target) as staging:
        inputs.merged.save_pretrained(staging, safe_serialization=True)
        _write_tokenizer(inputs, staging)
        _generation_config(inputs).save_pretrained(staging)
        (staging / "README.md").write_text(
            model_card(inputs.source, "A merged model"), encoding="utf-8"
        )
        write_manifest(staging, HF_MANIFEST)
    return target


def export_hf(inputs: ExportInputs, *, verify_items: int) -> ExportResult:
    out_dir = inputs.source.out_dir("hf")
    folder = write_hf(inputs, out_dir)
    artifact = Artifact(folder, "model")
    result = ExportResult("hf", out_dir, artifacts=[artifact])
    if verify_items:
        artifact.verification = reload_check(inputs, folder, verify_items)
        if artifact.verification["tokenizer_identical"] != artifact.verification["prompts"]:
            result.warnings.append("the saved tokenizer renders prompts differently after reload")
    result.notes.append(f"AutoModelForCausalLM.from_pretrained({str(folder)!r})")
    return result
