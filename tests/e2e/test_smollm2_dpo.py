"""End to end on the real bundled SmolLM2-135M-Instruct through the real CLI: DPO, judged
on held-out preference pairs (a few steps)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .smollm2_cli import train_and_evaluate

pytestmark = pytest.mark.e2e


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
