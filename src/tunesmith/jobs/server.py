"""Join the jobs store to a loaded server: which bases jobs may use, and the worker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tunesmith.jobs.routes import JobsState
from tunesmith.jobs.store import Store
from tunesmith.jobs.worker import die_with_parent
from tunesmith.models.bundled import BUNDLED_MODELS
from tunesmith.serve.app import ServerState
from tunesmith.serve.registry import base_model_id


def attach_jobs(
    state: ServerState, workspace: Path, base_models: dict[str, str] | None = None
) -> JobsState:
    """Jobs may fine-tune the bundled model, the bases of the served runs and
    ``base_models`` (id → name or dir, chosen by whoever starts the server)."""
    bases = {name: name for name in BUNDLED_MODELS}
    for key in state.registry.base_names():
        bases[base_model_id(key)] = key
    bases.update(base_models or {})
    state.jobs = JobsState(store=Store(workspace), base_models=bases)
    return state.jobs


def start_worker(workspace: Path) -> subprocess.Popen:
    """The worker in its own process (``tunesmith worker``), so training never blocks
    the server and a crash of the worker leaves the server running. It dies with the
    server (``PR_SET_PDEATHSIG``): uvicorn re-raises SIGTERM after its shutdown, so no
    ``finally`` of ours would be sure to stop it; its job is requeued by its lease."""
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.jobs.worker", "--workspace", str(workspace)],
        preexec_fn=die_with_parent,
    )
