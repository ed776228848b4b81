"""Exact resume through the real CLI: N steps == k steps + kill -9 (or SIGTERM) + resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FACTS = [
    ("What is two plus two?", "Four."),
    ("capital of France?", "Paris"),
    ("capital of Italy?", "Rome"),
    ("Translate to French: hello", "bonjour"),
    ("What is three plus five?", "Eight."),
    ("Reply in JSON", '{"intent": "GetWeather"}'),
    ("one word", "spam"),
    ("another word", "ham"),
    ("say thank you", "thank you"),
    ("say goodbye", "goodbye"),
    ("a number", "7"),
    ("two numbers", "4 5"),
]


@pytest.fixture
def run_setup(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    data = tmp_path / "facts.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{q} ({i})"},
                {"role": "assistant", "content": a},
            ]
        }
        for i in range(2)
        for q, a in FACTS
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "resume.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: facts.jsonl, split: [0.8, 0.2, 0.0], max_length: 64}}
            method: {{name: lora, r: 4, alpha: 8, dropout: 0.1}}
            train:
              max_steps: 6
              batch_size: 4
              gradient_accumulation: 2
              learning_rate: 0.01
              eval_every: 2
              early_stopping_patience: null
            eval: {{enabled: false}}
            """
        )
    )
    return config, tmp_path


DRIVER = """
import os, signal, sys
from tunesmith.engine import checkpoint, progress
mode, at_step = sys.argv[1], int(sys.argv[2])
original_save = checkpoint.save_checkpoint
original_advance = progress.TrainingProgress.advance_to

def save_then_die(*args, **kwargs):
    path = original_save(*args, **kwargs)
    if args[1] == at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

def advance_then_term(self, step, fields):
    original_advance(self, step, fields)
    if step == at_step:
        os.kill(os.getpid(), signal.SIGTERM)

if mode == "kill":
    checkpoint.save_checkpoint = save_then_die
else:
    progress.TrainingProgress.advance_to = advance_then_term
from tunesmith.cli import app
app(sys.argv[3:], standalone_mode=True)
"""


def tunesmith(*args: str, cwd: Path, driver: tuple[str, int] | None = None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if driver:
        command = [sys.executable, "-c", DRIVER, driver[0], str(driver[1]), *args]
    else:
        command = [sys.executable, "-m", "tunesmith.cli", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def train_losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["train_loss"] for line in lines if "train_loss" in line}


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "final" / "adapter_model.safetensors")


@pytest.mark.parametrize("interrupt", [("kill", 4), ("term", 3)])
def test_interrupted_and_resumed_equals_uninterrupted(run_setup, interrupt) -> None:
    config, workdir = run_setup
    whole = tunesmith("train", str(config), "--set", "output.name=whole", cwd=workdir)
    assert whole.returncode == 0, whole.stderr

    name = ["--set", "output.name=parts"]
    first = tunesmith("train", str(config), *name, cwd=workdir, driver=interrupt)
    if interrupt[0] == "kill":
        assert first.returncode == -9
    else:
        assert first.returncode == 143, first.stderr  # saved a checkpoint and stopped cleanly
    assert not (workdir / "runs" / "parts" / "final").exists()

    second = tunesmith("train", str(config), *name, "--resume", "auto", cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert f"at step {interrupt[1]}" in second.stdout

    expected = train_losses(workdir / "runs" / "whole")
    assert sorted(expected) == list(range(1, 7))
    assert train_losses(workdir / "runs" / "parts") == pytest.approx(expected, abs=1e-6)
    resumed, uninterrupted = (
        adapter(workdir / "runs" / "parts"),
        adapter(workdir / "runs" / "whole"),
    )
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, atol=1e-6, rtol=0)


def test_resume_refuses_changed_batch_size_with_a_diff(run_setup) -> None:
    config, workdir = run_setup
    first = tunesmith("train", str(config), cwd=workdir, driver=("kill", 2))
    assert first.returncode == -9
    changed = tunesmith(
        "train", str(config), "--set", "train.batch_size=2", "--resume", "auto", cwd=workdir
    )
    assert changed.returncode == 2
    assert "Can't resume" in changed.stderr
    assert "micro_batch_size: saved 4 now 2" in changed.stderr
    assert "Traceback" not in changed.stderr


def test_resume_from_a_missing_checkpoint_is_a_clear_error(run_setup) -> None:
    config, workdir = run_setup
    result = tunesmith("train", str(config), "--resume", "runs/nowhere/step-9", cwd=workdir)
    assert result.returncode == 2
    assert "Can't find a valid checkpoint" in result.stderr
