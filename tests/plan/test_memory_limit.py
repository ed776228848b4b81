"""The verdict holds: a run the plan says does not fit a limit fails under it, one it
says fits, runs. The limit is enforced on the training process's resident peak
(`tunesmith.plan.limit`), the quantity the plan predicts on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tunesmith.plan.limit import run_under_memory_limit


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunesmith.cli", *args]


def test_plan_verdict_matches_a_run_under_the_limit(run_setup: tuple[Path, Path]) -> None:
    config, tmp = run_setup
    out = ["--set", f"output.dir={tmp / 'runs'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    planned = subprocess.run(_cli("plan", str(config), "--json", "--device", "cpu", *out),
                             capture_output=True, text=True, env=env, check=True)  # fmt: skip
    plan = json.loads(planned.stdout)
    peak = plan["checked_peak_bytes"]
    assert plan["total_predicted_peak_bytes"] == peak  # on CPU what fits is what is measured
    roomy, tight = int(peak * 1.15), int(peak * 0.85)
    for limit, fits in ((roomy, True), (tight, False)):  # the plan's verdict at each limit
        run = run_under_memory_limit(_cli("train", str(config), "--no-eval", *out), limit, env=env)
        assert run.killed_for_memory is not fits, (limit, run.peak_bytes, run.output[-2000:])
        assert (run.returncode == 0) is fits
