"""The store keeps everything across a restart and never leaves a job held by no one."""

from __future__ import annotations

import time
from pathlib import Path

from tunesmith.jobs import store as store_module
from tunesmith.jobs.store import Store

BODY = {"model": "tiny", "training_file": "file-1", "method": {"type": "supervised"}}


def test_a_reopened_store_has_every_file_job_and_event(tmp_path: Path) -> None:
    first = Store(tmp_path)
    first.add_file("file-1", "facts.jsonl", "fine-tune", 3, "ab", ".jsonl")
    first.add_job("ftjob-1", BODY)
    first.add_event("ftjob-1", "info", "step 1", "metrics", {"step": 1})
    # No close: a killed server never gets to close its connection.
    again = Store(tmp_path)
    assert again.file("file-1")["filename"] == "facts.jsonl"
    assert again.job("ftjob-1")["status"] == "validating_files"
    events, more = again.events("ftjob-1", None, 10)
    assert [e["message"] for e in events] == ["step 1", "Validating training file"]
    assert not more and again.last_metric_step("ftjob-1") == 1


def test_a_lapsed_lease_puts_the_job_back_in_the_queue(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path)
    store.add_job("ftjob-1", BODY)
    monkeypatch.setattr(store_module, "LEASE_SECONDS", 0.05)
    claimed = store.claim_next("worker-a")
    store.set_job(claimed["id"], status="running")
    assert store.claim_next("worker-b") is None  # held by worker-a
    time.sleep(0.1)
    store.release_stale()
    job = store.job("ftjob-1")
    assert job["status"] == "queued" and job["lease_owner"] is None
    assert store.claim_next("worker-b")["lease_owner"] == "worker-b"


def test_cancel_of_a_job_no_worker_holds_is_immediate(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add_job("ftjob-1", BODY)
    assert store.request_control("ftjob-1", "cancel", ("validating_files",))
    assert store.job("ftjob-1")["status"] == "cancelled"
    assert not store.request_control("ftjob-1", "cancel", ("validating_files",))
