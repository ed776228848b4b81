"""Exact resume through the real CLI: N steps == k steps + kill -9 (or SIGTERM) + resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.helpers import adapter, train_losses, val_losses

DRIVER = """
import os, signal, sys
from tunesmith.engine import checkpoint, loop, progress
mode, at_step = sys.argv[1], int(sys.argv[2])
original_evaluate = loop.evaluate_loss
original_save = checkpoint.save_checkpoint
original_advance = progress.TrainingProgress.advance_to

def save_then_die(*args, **kwargs):
    path = original_save(*args, **kwargs)
    if args[1] == at_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return path

def advance_then_signal(self, step, fields):
    original_advance(self, step, fields)
    if step == at_step:
        os.kill(os.getpid(), signal.SIGKILL if mode == "crash" else signal.SIGTERM)

def term_during_validation(*args, **kwargs):
    # The pipeline's validation before training passes no stop_requested; the loop's does.
    if kwargs.get("stop_requested") and progress_step["now"] == at_step:
        os.kill(os.getpid(), signal.SIGTERM)
    return original_evaluate(*args, **kwargs)

progress_step = {"now": 0}
def track_step(self, step, fields):
    progress_step["now"] = step
    original_advance(self, step, fields)

if mode == "kill":
    checkpoint.save_checkpoint = save_then_die
elif mode == "eval":
    loop.evaluate_loss = term_during_validation
    progress.TrainingProgress.advance_to = track_step
else:
    progress.TrainingProgress.advance_to = advance_then_signal
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


def logged_steps(run_dir: Path) -> list[tuple[int, str]]:
    """Every line of metrics.jsonl as (step, kind), duplicates and order kept."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], "val" if "val_loss" in line else "train") for line in lines]


# kill: SIGKILL right after the step-4 checkpoint; crash: SIGKILL at step 5, a step after
# it; term: SIGTERM at step 3, an epoch boundary; eval: SIGTERM during step 4's validation.
@pytest.mark.parametrize("interrupt", [("kill", 4), ("crash", 5), ("term", 3), ("eval", 4)])
def test_interrupted_and_resumed_equals_uninterrupted(run_setup, interrupt) -> None:
    config, workdir = run_setup
    whole = tunesmith("train", str(config), "--set", "output.name=whole", cwd=workdir)
    assert whole.returncode == 0, whole.stderr

    name = ["--set", "output.name=parts"]
    first = tunesmith("train", str(config), *name, cwd=workdir, driver=interrupt)
    if interrupt[0] in ("kill", "crash"):
        assert first.returncode == -9
    else:
        assert first.returncode == 143, first.stderr  # saved a checkpoint and stopped cleanly
    assert not (workdir / "runs" / "parts" / "final").exists()
    saved = workdir / "runs" / "parts" / "checkpoints" / "step-2"
    assert {"COMPLETE.json", "trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"} <= {
        path.name for path in saved.iterdir()
    }
    train_state = json.loads((saved / "train_state.json").read_text())
    assert train_state["config"]["train"]["gradient_accumulation"] == 2  # the resolved config
    assert len(train_state["data_fingerprint"]) == 16
    assert train_state["loop"]["step"] == 2 and train_state["loop"]["tokens_seen"] > 0
    if interrupt[0] == "eval":
        assert "stopped during validation" in first.stdout + first.stderr
        step_4 = workdir / "runs" / "parts" / "checkpoints" / "step-4" / "train_state.json"
        assert json.loads(step_4.read_text())["loop"]["eval_pending"] is True

    second = tunesmith("train", str(config), *name, "--resume", "auto", cwd=workdir)
    assert second.returncode == 0, second.stderr
    resumed_at = 4 if interrupt[0] == "crash" else interrupt[1]  # the newest checkpoint
    assert f"at step {resumed_at} of 6" in second.stdout
    assert f"6 steps ({6 - resumed_at} after resuming at step {resumed_at})" in second.stdout
    # The steps logged after the last checkpoint are not left in the log twice.
    assert logged_steps(workdir / "runs" / "parts") == logged_steps(workdir / "runs" / "whole")
    assert "validation loss" in second.stdout  # the summary still shows before → after

    if interrupt[0] == "eval":
        # The validation interrupted at step 4 ran once, on resume, as it did uninterrupted.
        assert val_losses(workdir / "runs" / "parts") == val_losses(workdir / "runs" / "whole")

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


def test_resuming_a_finished_run_says_so_and_changes_nothing(run_setup) -> None:
    config, workdir = run_setup
    assert tunesmith("train", str(config), cwd=workdir).returncode == 0
    run = workdir / "runs" / "resume"
    trained, log = adapter(run), (run / "metrics.jsonl").read_text()
    again = tunesmith("train", str(config), "--resume", "auto", cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert "nothing left to train" in again.stdout
    assert "all 6 steps were already trained" in again.stdout
    assert (run / "metrics.jsonl").read_text() == log
    for key, value in trained.items():
        assert torch.equal(adapter(run)[key], value), key


@pytest.mark.parametrize(
    ("change", "diff"),
    [
        (["--set", "train.learning_rate=0.02"], "learning_rate: saved 0.01 now 0.02"),
        (["--set", "method.r=8"], "method.r: saved 4 now 8"),
        (["--set", "train.max_steps=8"], "total_steps: saved 6 now 8"),
        (["--set", "data.train=[facts-changed.jsonl]"], "data_fingerprint: saved"),
    ],
)
def test_resume_refuses_changed_data_or_schedule_with_a_diff(run_setup, change, diff) -> None:
    config, workdir = run_setup
    rows = (workdir / "facts.jsonl").read_text().splitlines()
    (workdir / "facts-changed.jsonl").write_text("\n".join(rows[:-1]) + "\n")
    first = tunesmith("train", str(config), cwd=workdir, driver=("kill", 2))
    assert first.returncode == -9
    changed = tunesmith(
        "train", str(config), "--set", "output.name=resume", *change, "--resume", "auto",
        cwd=workdir,
    )  # fmt: skip
    assert changed.returncode == 2, changed.stderr
    assert "Can't resume" in changed.stderr
    assert diff in changed.stderr
    assert "Traceback" not in changed.stderr


def test_allow_mismatch_trains_a_finished_run_further_and_names_what_changed(run_setup) -> None:
    config, workdir = run_setup
    assert tunesmith("train", str(config), cwd=workdir).returncode == 0
    further = tunesmith(
        "train", str(config), "--set", "train.max_steps=8", "--resume", "auto",
        "--resume-allow-mismatch", cwd=workdir,
    )  # fmt: skip
    assert further.returncode == 0, further.stderr
    assert "no longer an exact continuation" in further.stdout
    assert "total_steps: saved 6 now 8" in further.stdout
    assert "8 steps (2 after resuming at step 6)" in further.stdout
    assert sorted(train_losses(workdir / "runs" / "resume")) == list(range(1, 9))
