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
