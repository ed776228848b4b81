"""Two processes (torchrun, gloo on CPU) equal one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import adapter, train_losses

TORCHRUN = Path(sys.executable).with_name("torchrun")


def samples(run_dir: Path, rank: int) -> dict[int, list[str]]:
    lines = (run_dir / f"samples.rank{rank}.jsonl").read_text().splitlines()
    return {entry["step"]: entry["examples"] for entry in map(json.loads, lines)}


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="no torchrun")
def test_two_processes_equal_one_with_the_same_global_batch(run_setup) -> None:
    config, workdir = run_setup
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # Dropout draws from each process's own RNG stream, so equality holds only without it.
    common = ["train", str(config), "--set", "train.eval_every=100", "--set", "method.dropout=0"]
    single = subprocess.run(
        [sys.executable, "-m", "tunesmith.cli", *common, "--set", "output.name=single"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "tunesmith.cli",
            *common,
            "--set",
            "output.name=double",
            "--set",
            "train.gradient_accumulation=1",
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr
    assert "2 process(es)" in double.stdout

    one, two = workdir / "runs" / "single", workdir / "runs" / "double"
    rank0, rank1, alone = samples(two, 0), samples(two, 1), samples(one, 0)
    for step, examples in alone.items():
        assert not set(rank0[step]) & set(rank1[step])  # the ranks saw different data
        assert sorted(rank0[step] + rank1[step]) == sorted(examples)
    assert train_losses(two) == pytest.approx(train_losses(one), abs=1e-5)
    for key, value in adapter(one).items():
        torch.testing.assert_close(adapter(two)[key], value, atol=1e-5, rtol=0)


SIGTERM_RANK_1 = """
import os, signal, sys
from tunesmith.engine import loop
original_window = loop.backward_window
calls = {"n": 0}

def window(*args, **kwargs):
    calls["n"] += 1
    if os.environ["RANK"] == "1" and calls["n"] == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return original_window(*args, **kwargs)

loop.backward_window = window
from tunesmith.cli import app
app(sys.argv[1:])
"""


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="no torchrun")
def test_sigterm_to_one_rank_stops_both_at_the_same_step(run_setup) -> None:
    config, workdir = run_setup
    driver = workdir / "driver.py"
    driver.write_text(SIGTERM_RANK_1)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            str(TORCHRUN), "--nproc_per_node", "2", "--master_port", "29534", str(driver),
            "train", str(config), "--set", "output.name=stopped",
            "--set", "train.gradient_accumulation=1",
        ],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0  # the launcher reports the ranks' exit code 143
    run = workdir / "runs" / "stopped"
    assert max(samples(run, 0)) == max(samples(run, 1)) == 3
    assert (run / "checkpoints" / "step-3" / "COMPLETE.json").is_file()
    assert not (run / "final").exists()
