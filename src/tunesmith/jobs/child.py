"""The training process of one job: ``python -m tunesmith.jobs.child RUN_DIR``.

It trains the run's ``config.yaml`` with ``resume="auto"`` (a job that was paused, or
whose worker died, continues from its newest checkpoint), evaluates it, and exits 0;
a SIGTERM saves a checkpoint and exits `STOPPED_BY_SIGNAL_EXIT_CODE` (engine/signals.py).
A user error is written to ``job-error.txt`` for the worker to report.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tunesmith import api
from tunesmith.config import load_config
from tunesmith.engine.signals import STOPPED_BY_SIGNAL_EXIT_CODE
from tunesmith.errors import TunesmithError
from tunesmith.runs import RunPaths

ERROR_FILE = "job-error.txt"


def main(run_dir: Path) -> int:
    paths = RunPaths(run_dir)
    try:
        config = load_config(paths.root / "job.yaml")
        summary = api.train(config, resume="auto", show_progress=False)
        if summary.stopped_by_signal:
            return STOPPED_BY_SIGNAL_EXIT_CODE
        if config.eval.enabled:
            api.evaluate(paths.root)
    except TunesmithError as error:
        (paths.root / ERROR_FILE).write_text(str(error), encoding="utf-8")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
