"""End to end on the real bundled SmolLM2-135M-Instruct through the real CLI: LoRA trains,
answers and exports to a GGUF LoRA that llama.cpp runs (a few steps)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .smollm2_cli import REPO, tunesmith

pytestmark = pytest.mark.e2e


def test_lora_on_smollm2_trains_saves_and_answers(tmp_path: Path) -> None:
    preset = REPO / "examples" / "support-lora.yaml"
    trained = tunesmith(
        "train",
        str(preset),
        "--set", f"output.dir={tmp_path}",
        "--set", "train.max_steps=3",
        "--set", "train.batch_size=4",
        "--set", "train.eval_every=3",
        "--no-eval",
        cwd=tmp_path,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "trainable: 4,884,480 of 139,399,488 (3.50%)" in trained.stdout
    run_dir = tmp_path / "support-lora"
    losses = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in line
    ]
    assert len(losses) == 3
    # Training happened: held-out loss fell from the base model's to the adapter's (the run
    # prints both; a run that does not update the weights prints the same number twice).
    drop = re.search(r"validation loss (\d+\.\d+) → (\d+\.\d+)", trained.stdout)
    assert drop, trained.stdout[-2000:]
    before, after = float(drop.group(1)), float(drop.group(2))
    assert after < before - 0.01, (before, after)
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()

    answer = tunesmith(
        "generate", str(run_dir), "--prompt", "Play some jazz by Miles Davis",
        "--max-new-tokens", "24",
        cwd=tmp_path,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr[-3000:]
    assert len(answer.stdout.strip()) > 0
    _export_runs_in_llama_cpp(run_dir, tmp_path)


def _export_runs_in_llama_cpp(run_dir: Path, cwd: Path) -> None:
    """The adapter as a GGUF LoRA, on the shipped Q4_1 file and on an F16 export of the base,
    each loaded by llama.cpp and held to transformers on held-out prompts."""
    pytest.importorskip("llama_cpp")
    exported = tunesmith(
        "export", str(run_dir), "--to", "gguf-lora", "--verify-items", "3", cwd=cwd
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    report = json.loads((run_dir / "export" / "report.json").read_text())["gguf-lora"]
    checks = [f["verification"] for f in report["files"].values() if f["verification"]]
    assert len(checks) == 2  # the shipped Q4_1 base and the exported F16 base
    for check in checks:
        assert check["tokenizer_identical"] == check["prompts"] == 3
        assert check["top1_agreement"] > 0.9
    f16 = next(c for c in checks if c["base"].endswith("base-f16.gguf"))
    assert f16["replies_identical"] == 3, f16
    assert "closest to training" in exported.stdout


def test_gguf_tensor_layout_matches_the_shipped_file() -> None:
    """Our HF→GGUF rope row order, checked against the GGUF file SmolLM2 ships as: the
    safetensors copy came from it through transformers, so reordering them back must give
    the shipped (dequantized) tensors."""
    import gguf
    from safetensors.torch import load_file

    from tunesmith.export.llama_layout import rope_rows_to_pairs
    from tunesmith.models.bundled import ensure_converted, gguf_path

    shipped = gguf.GGUFReader(gguf_path("smollm2-135m-instruct"))
    tensors = {t.name: t for t in shipped.tensors}
    weights = load_file(ensure_converted("smollm2-135m-instruct") / "model.safetensors")
    for ours, theirs, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
        tensor = tensors[f"blk.0.{theirs}.weight"]
        expected = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(tensor.shape[::-1])
        mine = rope_rows_to_pairs(weights[f"model.layers.0.self_attn.{ours}.weight"].numpy(), heads)
        assert abs(mine - expected).max() < 1e-6
