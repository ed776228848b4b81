"""`--calibrate N`: time N real optimizer steps of the run on this machine.

The steps run through `api.train` itself, on a copy of the config with its output in a
temporary directory, no evaluation and no checkpoints, so what is timed is the run's own
loop. The first step is left out of the rate: it pays for kernel selection and the
optimizer's state allocation, which a long run pays once.
"""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from tunesmith.config import RunConfig
from tunesmith.errors import TunesmithError


@dataclass(frozen=True)
class Calibration:
    steps: int
    tokens_per_second: float
    seconds_per_step: float
    peak_memory_bytes: int | None
    """What the calibration run measured (its summary.json), for the plan to be checked."""


def calibrate(run: RunConfig, steps: int) -> Calibration:
    """Train ``steps`` + 1 steps in a scratch directory and measure the last ``steps``."""
    if steps < 1:
        raise TunesmithError(f"--calibrate {steps}: give a number of steps of at least 1.")
    from tunesmith import api

    with tempfile.TemporaryDirectory(prefix="tunesmith-calibrate-") as scratch:
        trial = run.model_copy(deep=True)
        trial.train = trial.train.model_copy(
            update={"max_steps": steps + 1, "eval_every": 10**9, "save_every": 10**9,
                    "early_stopping_patience": None, "report_to": []}
        )  # fmt: skip
        trial.eval.enabled = False
        trial.output.dir = Path(scratch)
        trial.output.name = "calibration"
        summary = api.train(trial, console=Console(file=io.StringIO()), show_progress=False)
        records = _step_records(summary.run_dir / "metrics.jsonl")
    rate, per_step = _rate_after_first(records)
    return Calibration(steps, rate, per_step, summary.measured_peak_bytes)


def _step_records(path: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [row for row in rows if "tokens_per_s" in row and "tokens" in row]


def _rate_after_first(records: list[dict[str, float]]) -> tuple[float, float]:
    """Tokens/s and seconds/step over the steps after the first, from the cumulative
    tokens and tokens/s the loop logs each step."""
    elapsed = [row["tokens"] / max(row["tokens_per_s"], 1e-9) for row in records]
    if len(records) < 2:
        return float(records[-1]["tokens_per_s"]), elapsed[-1]
    tokens = records[-1]["tokens"] - records[0]["tokens"]
    seconds = max(elapsed[-1] - elapsed[0], 1e-9)
    return tokens / seconds, seconds / (len(records) - 1)
