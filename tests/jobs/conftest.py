"""A real jobs server (uvicorn on 127.0.0.1) with a real worker process, on the tiny base."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tunesmith.jobs.server import attach_jobs
from tunesmith.serve import Limits, build_state, start_in_background
from tunesmith.serve.server import BackgroundServer

from ..conftest import FACTS, REPO_ROOT
from ..serve.conftest import API_KEY, serve_base_dir  # noqa: F401  (a fixture)

TINY_OVERRIDES = [
    "train.max_steps=40", "train.eval_every=100", "train.early_stopping_patience=null",
    "data.max_length=64", "data.split=[0.8,0.2,0.0]", "eval.enabled=false",
    "method.r=4", "method.alpha=8",
]  # fmt: skip
LEARNING_RATE_MULTIPLIER = 150  # × LoRA's 2e-4: the 0.03 that learns the facts in 40 steps
TERMINAL = ("succeeded", "failed", "cancelled")


def facts_file(directory: Path) -> Path:
    path = directory / "facts.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"{q} ({i})"},
                      {"role": "assistant", "content": a}]}
        for i in range(2)
        for q, a in FACTS
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def start_worker(workspace: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "tunesmith.jobs.worker", "--workspace", str(workspace)], env=env
    )


def wait_for(client: OpenAI, job_id: str, statuses: tuple[str, ...], timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture
def jobs_server(workspace: Path, serve_base_dir: Path) -> Iterator[BackgroundServer]:  # noqa: F811
    state = build_state([], keys=[API_KEY], device="cpu", limits=Limits(max_body_bytes=10_000_000))
    attach_jobs(state, workspace, {"tiny": str(serve_base_dir)})
    with start_in_background(state) as running:
        yield running


@pytest.fixture
def worker(workspace: Path, jobs_server: BackgroundServer) -> Iterator[subprocess.Popen]:
    process = start_worker(workspace)
    yield process
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture
def client(jobs_server: BackgroundServer) -> OpenAI:
    return OpenAI(base_url=jobs_server.base_url, api_key=API_KEY, max_retries=0)
