"""`--to hf` and `--to vllm`: folders a user loads as they are, with their proof."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tunesmith import api
from tunesmith.export import export_run
from tunesmith.export.errors import ExportError
from tunesmith.export.vllm import check_vllm_adapter
from tunesmith.manifest import file_sha256


def test_hf_folder_reloads_to_the_evaluated_model(fresh_run: Path) -> None:
    held_out = fresh_run.parent / "held_out.jsonl"
    rows = [(f"capital of France? ({i + 7})", "Paris") for i in range(4)]
    held_out.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            )
            + "\n"
            for q, a in rows
        )
    )
    api.evaluate(fresh_run, test_files=[held_out], max_items=4)
    result = export_run(fresh_run, "hf", verify_items=4)
    folder = result.out_dir
    check = result.artifacts[0].verification
    assert check == {"prompts": 4, "tokenizer_identical": 4, "max_abs_logit_delta": 0.0}
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "tokenizer.json", "generation_config.json", "README.md"} <= set(
        manifest
    )
    assert all(file_sha256(folder / n) == e["sha256"] for n, e in manifest.items())
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["do_sample"] is False and generation["eos_token_id"] == 2
    card = (folder / "README.md").read_text()
    assert "| metric | base zero-shot | base few-shot | fine-tuned |" in card
    assert "| rouge_l |" in card and "Verdict:" in card
    assert "Forgetting (perplexity on general text)" in card and "facts.jsonl" in card
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"].startswith("{% for message in messages %}")


def test_vllm_adapter_folder_and_exact_command(fresh_run: Path) -> None:
    result = export_run(fresh_run, "vllm", verify_items=3)
    folder = result.out_dir
    assert {p.name for p in folder.iterdir()} == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
        "serve.sh",
    }
    command = shlex.split(result.notes[0])
    assert command[:2] == ["vllm", "serve"] and "--enable-lora" in command
    assert command[command.index("--max-lora-rank") + 1] == "8"  # r=4 → vLLM's next allowed
    module = json.loads(command[command.index("--lora-modules") + 1])
    assert module == {"name": "facts", "path": str(folder), "base_model_name": command[2]}
    assert result.artifacts[0].verification["max_abs_logit_delta"] < 1e-4


@pytest.mark.parametrize(
    "config,reason",
    [
        ({"r": 8, "modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"r": 8, "use_dora": True}, "DoRA"),
        ({"r": 1024}, "rank 1024"),
        ({"r": 8, "target_modules": ["embed_tokens"]}, "embed_tokens"),
    ],
)
def test_vllm_refusals_name_the_reason_and_the_merged_route(config: dict, reason: str) -> None:
    with pytest.raises(ExportError, match=reason) as refused:
        check_vllm_adapter(config)
    assert "--to hf" in str(refused.value)
