"""End to end on the real bundled SmolLM2-135M-Instruct, through the real CLI (a few steps)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def tunesmith(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


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


SHORT_GENERAL_TEXT = (
    "The river rises in the hills north of the town and flows south through farmland, "
    "where it is joined by two smaller streams before it reaches the sea. In the nineteenth "
    "century mills were built along its banks, and the town grew around them. Today the old "
    "mill buildings hold a museum, a library and several small shops, and a footpath follows "
    "the water from the station to the harbour. "
) * 6


def train_and_evaluate(preset: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    """`tunesmith train PRESET` with evaluation on, bounded: 2 steps, 4 evaluation items,
    short generations and a short general text for the forgetting check."""
    general = tmp_path / "general.txt"
    general.write_text(SHORT_GENERAL_TEXT)
    result = tunesmith(
        "train",
        str(REPO / "examples" / preset),
        "--set", f"output.dir={tmp_path}",
        "--set", "train.max_steps=2",
        "--set", "train.batch_size=4",
        "--set", "train.eval_every=2",
        "--set", "eval.enabled=true",
        "--set", "eval.max_items=4",
        "--set", "eval.max_new_tokens=24",
        "--set", "eval.k_shot=1",
        "--set", f"eval.forgetting_text={general}",
        *extra,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    run_dir = tmp_path / Path(preset).stem
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["comparison"]["verdict"] in result.stdout
    assert results["forgetting"] is not None
    assert (run_dir / "eval" / "report.html").is_file()
    return result.stdout, results


def test_lora_sft_classification_on_smollm2_ends_with_a_verdict(tmp_path: Path) -> None:
    """Label-ranked scoring of 7 intents on 4 items; 63 s on 2 shared CPU cores
    (pytest tests/e2e/test_smollm2.py -m e2e -k classification --durations=3)."""
    stdout, results = train_and_evaluate("snips-intent-lora.yaml", tmp_path)
    assert results["kind"] == "classification"
    assert [row["metric"] for row in results["comparison"]["metrics"]] == ["accuracy", "macro_f1"]
    labels = set(results["settings"]["label_constrained"])
    assert len(labels) == 7
    for outputs in results["outputs"].values():
        assert len(outputs) == 4 and set(outputs) <= labels
    assert "classification:" in stdout


def test_lora_dpo_on_smollm2_is_judged_on_held_out_pairs(tmp_path: Path) -> None:
    """2 DPO steps, 4 held-out orca pairs; 179 s on 2 shared CPU cores (-k held_out_pairs).
    No validation split: its loss before and after training (policy and reference on 10
    long pairs, twice) took it to 372 s."""
    stdout, results = train_and_evaluate(
        "preference-dpo.yaml", tmp_path, "--set", "data.split=[0.9,0.0,0.1]"
    )
    assert results["kind"] == "preference" and "preference pairs:" in stdout
    accuracy = results["comparison"]["metrics"][0]
    assert accuracy["metric"] == "preference_accuracy"
    assert accuracy["values"]["base"]["estimate"] == 0.5  # implicit reward 0: chance
    assert 0 <= accuracy["values"]["fine-tuned"]["estimate"] <= 1
    generations = results["generations"]
    assert len(generations["base"]) == len(generations["fine-tuned"]) == 4
    assert any(reply.strip() for reply in generations["fine-tuned"])


def test_prompt_tuning_on_smollm2_evaluates_with_its_virtual_tokens(tmp_path: Path) -> None:
    """111 s on 2 shared CPU cores (-k virtual_tokens). Before the fix the forgetting check
    of a prompt-tuned model ended in `Expected target size [4, 531], got [4, 511]`."""
    _stdout, results = train_and_evaluate("support-prompt.yaml", tmp_path)
    assert results["kind"] == "generation"
    forgetting = results["forgetting"]
    assert forgetting["base_perplexity"] != forgetting["fine_tuned_perplexity"]
    assert all(len(outputs) == 4 for outputs in results["outputs"].values())


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
