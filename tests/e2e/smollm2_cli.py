"""What the SmolLM2 end-to-end files share: the real CLI in a subprocess, and a bounded
train-with-evaluation run. The tests are spread over files so `--dist loadfile` gives each
worker a share of the long ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
