"""Pause, resume, cancel and a worker killed with -9: the job ends where it should."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from openai import OpenAI

from ..helpers import adapter
from .conftest import (
    LEARNING_RATE_MULTIPLIER,
    TERMINAL,
    TINY_OVERRIDES,
    facts_file,
    start_worker,
    wait_for,
)

LONG = [*TINY_OVERRIDES, "train.max_steps=200", "train.save_every=10"]
KILLED = [*TINY_OVERRIDES, "train.max_steps=60", "train.save_every=10"]


def _start(client: OpenAI, tmp_path: Path, overrides: list[str] = LONG) -> str:
    uploaded = client.files.create(file=facts_file(tmp_path).open("rb"), purpose="fine-tune")
    hyper = {"batch_size": 4, "learning_rate_multiplier": LEARNING_RATE_MULTIPLIER}
    return client.fine_tuning.jobs.create(
        model="tiny", training_file=uploaded.id, seed=5,
        method={"type": "supervised", "supervised": {"hyperparameters": hyper}},
        extra_body={"tunesmith": {"overrides": overrides}},
    ).id  # fmt: skip


def _wait_for_checkpoint(client: OpenAI, job_id: str, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id).data
        if checkpoints:
            return checkpoints[0].step_number
        time.sleep(0.2)
    raise AssertionError("no checkpoint was written")


def test_pause_checkpoints_and_resume_finishes(client: OpenAI, worker, tmp_path: Path) -> None:
    job_id = _start(client, tmp_path)
    _wait_for_checkpoint(client, job_id)
    client.fine_tuning.jobs.pause(job_id)
    paused = wait_for(client, job_id, ("paused", *TERMINAL))
    assert paused.status == "paused" and paused.fine_tuned_model is None
    steps_at_pause = max(e.data["step"] for e in _metrics(client, job_id))
    assert steps_at_pause < 200
    time.sleep(1.5)  # a paused job stays paused: nothing trains it
    assert client.fine_tuning.jobs.retrieve(job_id).status == "paused"
    client.fine_tuning.jobs.resume(job_id)
    done = wait_for(client, job_id, TERMINAL)
    assert done.status == "succeeded", done.error
    assert {e.data["step"] for e in _metrics(client, job_id)} == set(range(1, 201))


def test_cancel_stops_at_a_checkpoint(client: OpenAI, worker, tmp_path: Path) -> None:
    job_id = _start(client, tmp_path)
    _wait_for_checkpoint(client, job_id)
    client.fine_tuning.jobs.cancel(job_id)
    cancelled = wait_for(client, job_id, TERMINAL)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert cancelled.fine_tuned_model is None


def test_kill_9_of_the_worker_resumes_to_the_same_adapter(
    client: OpenAI, workspace: Path, jobs_server, tmp_path: Path
) -> None:
    interrupted = _start(client, tmp_path, KILLED)
    first = start_worker(workspace)
    try:
        _wait_for_checkpoint(client, interrupted)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        requeued = wait_for(client, interrupted, ("queued", *TERMINAL), timeout=30)
        assert requeued.status == "queued"  # never `running` with no worker
    finally:
        first.kill()
    uninterrupted = _start(client, tmp_path, KILLED)
    second = start_worker(workspace)
    try:
        for job_id in (interrupted, uninterrupted):
            assert wait_for(client, job_id, TERMINAL).status == "succeeded"
    finally:
        second.terminate()
        second.wait(timeout=30)
    resumed = adapter(workspace / "runs" / interrupted)
    reference = adapter(workspace / "runs" / uninterrupted)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(resumed[key], value), key


def _metrics(client: OpenAI, job_id: str) -> list:
    events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data
    return [event for event in events if event.type == "metrics"]
