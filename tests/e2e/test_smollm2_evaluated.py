"""End to end on the real bundled SmolLM2-135M-Instruct through the real CLI: training
with evaluation on, for classification and for prompt tuning (a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .smollm2_cli import train_and_evaluate

pytestmark = pytest.mark.e2e


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


def test_prompt_tuning_on_smollm2_evaluates_with_its_virtual_tokens(tmp_path: Path) -> None:
    """111 s on 2 shared CPU cores (-k virtual_tokens). Before the fix the forgetting check
    of a prompt-tuned model ended in `Expected target size [4, 531], got [4, 511]`."""
    _stdout, results = train_and_evaluate("support-prompt.yaml", tmp_path)
    assert results["kind"] == "generation"
    forgetting = results["forgetting"]
    assert forgetting["base_perplexity"] != forgetting["fine_tuned_perplexity"]
    assert all(len(outputs) == 4 for outputs in results["outputs"].values())
