"""GGUF and GGUF LoRA exports, loaded by the real llama.cpp and held to transformers."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from transformers import PreTrainedTokenizerFast

from tunesmith.export import export_run
from tunesmith.export.errors import ExportError
from tunesmith.export.runtime import load_gguf


def _field(reader: gguf.GGUFReader, key: str) -> object:
    return reader.fields[key].contents()


def test_f16_and_q8_0_match_transformers_in_llama_cpp(fresh_run: Path, llama_cpp: None) -> None:
    result = export_run(fresh_run, "gguf", quant=["f16", "q8_0"], verify_items=6)
    f16, q8 = (a.verification for a in result.artifacts)
    assert f16 is not None and q8 is not None
    for check in (f16, q8):
        assert check["prompts"] == 5  # the run's validation split: it kept no test split
        assert check["tokenizer_identical"] == 5
        assert check["bos_count_llama_cpp"] == check["bos_count_transformers"]
    assert f16["replies_identical"] == 5 and f16["top1_agreement"] == 1.0
    assert f16["max_abs_logit_delta"] < 0.01
    assert abs(f16["perplexity_llama_cpp"] / f16["perplexity_transformers"] - 1) < 1e-3
    assert q8["top1_agreement"] > 0.9
    sizes = {a.role: a.size for a in result.artifacts}
    assert sizes["model q8_0"] < sizes["model f16"]
    report = json.loads((fresh_run / "export" / "report.json").read_text())
    assert set(report["gguf"]["files"]) == {f"gguf/facts-{q}.gguf" for q in ("f16", "q8_0")}


def test_metadata_comes_from_what_training_used(
    fresh_run: Path, tiny_tokenizer: PreTrainedTokenizerFast
) -> None:
    result = export_run(fresh_run, "gguf", quant="q8_0", verify_items=0)
    reader = gguf.GGUFReader(result.artifacts[0].path)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert _field(reader, "tokenizer.ggml.model") == "gpt2"
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    # The template writes <|im_start|> (this tokenizer's BOS) itself: no second BOS.
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False
    assert _field(reader, "tokenizer.ggml.eot_token_id") == im_end
    assert _field(reader, "tokenizer.chat_template") == tiny_tokenizer.chat_template
    assert _field(reader, "general.sampling.temp") == 0.0
    assert _field(reader, "tunesmith.run_id") == "facts"
    assert _field(reader, "general.base_model.0.name").endswith("tiny-llama0")
    assert len(_field(reader, "tokenizer.ggml.tokens")) == len(tiny_tokenizer)
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied to token_embd


def test_lora_on_its_base_matches_the_fine_tuned_model(fresh_run: Path, llama_cpp: None) -> None:
    result = export_run(fresh_run, "gguf-lora", verify_items=6)
    adapter = next(a for a in result.artifacts if a.role == "LoRA adapter")
    base = next(a for a in result.artifacts if a.role == "base")
    reader = gguf.GGUFReader(adapter.path)
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "adapter.type") == "lora"
    names = {t.name for t in reader.tensors}
    assert "blk.0.attn_q.weight.lora_a" in names and "blk.1.ffn_down.weight.lora_b" in names
    assert base.verification is not None
    assert base.verification["replies_identical"] == base.verification["prompts"] == 5
    assert base.verification["max_abs_logit_delta"] < 0.01
    # The adapter does something: the base alone is another model.
    prompt = [1, 5, 6, 7, 8]
    with load_gguf(base.path) as plain, load_gguf(base.path, lora=adapter.path) as tuned:
        assert abs(plain.logits(prompt) - tuned.logits(prompt)).max() > 0.05


def test_an_adapter_llama_cpp_cannot_apply_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    from ..serve.conftest import train_tiny_run

    run = train_tiny_run(tmp_path, tiny_model_dir, "ia3", method="{name: ia3}", steps=2)
    with pytest.raises(ExportError, match="--to gguf"):
        export_run(run, "gguf-lora", verify_items=0)


def test_k_quants_go_through_llama_cpps_quantizer(fresh_run: Path, llama_cpp: None) -> None:
    result = export_run(fresh_run, "gguf", quant="q4_k_m", verify_items=2)
    path = result.artifacts[0].path
    reader = gguf.GGUFReader(path)
    assert _field(reader, "general.file_type") == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert _field(reader, "tokenizer.ggml.eot_token_id") is not None  # metadata carried over
    # The tiny model's 32-wide rows cannot take 256-wide k-quant blocks: said in one line.
    assert any("k-quant blocks" in note for note in result.notes)
    assert not list(path.parent.glob(".*"))  # the F16 intermediate is gone
    assert result.artifacts[0].verification["tokenizer_identical"] == 2
