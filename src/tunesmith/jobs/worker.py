"""`tunesmith worker`: takes jobs from the store one at a time and trains each in a child.

The worker holds a lease on its job and renews it every second; a worker that dies stops
renewing, and the store puts the job back in the queue (never ``running`` with no
worker), where the next worker resumes it from its newest checkpoint. The child dies
with the worker (``PR_SET_PDEATHSIG``), so two processes never train one run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith import api
from tunesmith.config import ConfigError
from tunesmith.data.validate import DataError
from tunesmith.engine.loop import planned_steps
from tunesmith.engine.signals import STOPPED_BY_SIGNAL_EXIT_CODE
from tunesmith.jobs.child import ERROR_FILE
from tunesmith.jobs.configure import run_config
from tunesmith.jobs.progress import RunWatcher
from tunesmith.jobs.results import add_result_file
from tunesmith.jobs.schemas import fine_tuned_model_name
from tunesmith.jobs.store import Store, new_id
from tunesmith.runs import RunPaths

POLL_SECONDS = 0.5


def die_with_parent() -> None:
    """Linux: this child gets SIGKILL when its parent dies, like the parent's own crash."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@dataclass
class Worker:
    store: Store
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    say: Any = print

    def run_forever(self, stop_when_idle: bool = False) -> None:
        """Train jobs as they come; ``stop_when_idle`` returns once the queue is empty."""
        while True:
            job = self.store.claim_next(self.owner)
            if job is None:
                if stop_when_idle:
                    return
                time.sleep(POLL_SECONDS)
                continue
            self.run_job(job["id"])

    def run_job(self, job_id: str) -> None:
        try:
            with self._heartbeat(job_id):
                total_steps = self._validate(job_id)
            if total_steps is not None:
                self._train(job_id, total_steps)
        finally:
            self.store.set_job(job_id, lease_owner=None, control=None)

    @contextlib.contextmanager
    def _heartbeat(self, job_id: str) -> Iterator[None]:
        """Keep the lease while the data gate reads a large file."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(POLL_SECONDS):
                self.store.renew(job_id, self.owner)

        thread = threading.Thread(target=renew, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _validate(self, job_id: str) -> int | None:
        """The data gate; returns the planned steps, or None when the job failed."""
        job = self.store.job(job_id)
        body = json.loads(job["body"])
        run_dir = self.store.workspace.run_dir(job_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        files = {key: self.store.file(body[key]) if body.get(key) else None
                 for key in ("training_file", "validation_file")}  # fmt: skip
        try:
            config = run_config(
                body, base_path=body["base_path"], run_dir=run_dir,
                train_path=self.store.file_path(files["training_file"]),
                validation_path=self.store.file_path(files["validation_file"])
                if files["validation_file"] else None,
            )  # fmt: skip
            prepared = api.prepare_data(config)
        except DataError as error:
            self._fail(job_id, "invalid_training_file", self._readable(str(error), files),
                       "training_file")  # fmt: skip
            return None
        except ConfigError as error:
            self._fail(job_id, "invalid_hyperparameters", str(error), "tunesmith.overrides")
            return None
        (run_dir / "job.yaml").write_text(config.to_yaml(), encoding="utf-8")
        steps = planned_steps(config.train, len(prepared.train), 1)
        message = f"Files validated: {len(prepared.train)} training examples, {steps} steps"
        self.store.set_job(job_id, message, status="running")
        return steps

    def _readable(self, message: str, files: dict) -> str:
        """Problems named by the uploaded file's name, not our path for it."""
        for row in files.values():
            if row is not None:
                message = message.replace(str(self.store.file_path(row)), row["filename"])
        return message

    def _fail(self, job_id: str, code: str, message: str, param: str | None) -> None:
        error = {"code": code, "message": message, "param": param}
        self.store.set_job(job_id, message, "error", status="failed", error=error,
                           finished_at=int(time.time()))  # fmt: skip

    def _train(self, job_id: str, total_steps: int) -> None:
        run_dir = self.store.workspace.run_dir(job_id)
        log = (run_dir / "job.log").open("ab")
        child = subprocess.Popen(
            [sys.executable, "-m", "tunesmith.jobs.child", str(run_dir)],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )  # fmt: skip
        watcher = RunWatcher(self.store, job_id, run_dir, total_steps)
        signalled = False
        while child.poll() is None:
            control = self.store.renew(job_id, self.owner)
            if control in ("cancel", "pause") and not signalled:
                child.send_signal(signal.SIGTERM)
                signalled = True
            watcher.sync()
            time.sleep(POLL_SECONDS)
        log.close()
        watcher.sync()
        self._finish(job_id, child.returncode, watcher)

    def _finish(self, job_id: str, code: int, watcher: RunWatcher) -> None:
        job = self.store.job(job_id)
        if code == -signal.SIGTERM:  # the signal came before or after the training loop
            code = STOPPED_BY_SIGNAL_EXIT_CODE
        now = int(time.time())
        if code == 0:
            body = json.loads(job["body"])
            name = fine_tuned_model_name(body["model"], body.get("suffix"), job_id)
            results = add_result_file(self.store, watcher.records)
            self.store.set_job(
                job_id, f"New fine-tuned model created: {name}", status="succeeded",
                fine_tuned_model=name, finished_at=now, estimated_finish=None,
                trained_tokens=watcher.tokens_seen, result_files=[results],
            )  # fmt: skip
        elif code == STOPPED_BY_SIGNAL_EXIT_CODE and job["control"] == "pause":
            self.store.set_job(job_id, "Job paused at a checkpoint", status="paused",
                               estimated_finish=None)  # fmt: skip
        elif code == STOPPED_BY_SIGNAL_EXIT_CODE and job["control"] == "cancel":
            self.store.set_job(job_id, "Job cancelled", status="cancelled", finished_at=now,
                               estimated_finish=None)  # fmt: skip
        elif code == STOPPED_BY_SIGNAL_EXIT_CODE:
            self.store.set_job(job_id, "Training was stopped; job queued again", "warn",
                               status="queued")  # fmt: skip
        else:
            error_file = self.store.workspace.run_dir(job_id) / ERROR_FILE
            log = RunPaths(error_file.parent).root / "job.log"
            message = f"training exited with code {code}; see {log}"
            if error_file.is_file():
                message = error_file.read_text(encoding="utf-8")
            self._fail(job_id, "training_failed", message, None)


def main(argv: list[str] | None = None) -> None:
    """``python -m tunesmith.jobs.worker --workspace DIR`` (what ``tunesmith worker`` runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="tunesmith worker")
    parser.add_argument("--workspace", type=Path, default=Path("tunesmith-jobs"))
    args = parser.parse_args(argv)
    store = Store(args.workspace)
    worker = Worker(store, owner=new_id("worker"))
    print(f"worker {worker.owner}: taking jobs from {store.workspace.database}", flush=True)
    worker.run_forever()


if __name__ == "__main__":
    main()
