"""A training run seen from outside: ``metrics.jsonl`` → metrics events, ``checkpoints/``
→ checkpoint objects, the pace of the steps → ``estimated_finish``."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from tunesmith.jobs.store import Store
from tunesmith.runs import RunPaths

STEP_DIR = re.compile(r"^step-(\d+)$")


class RunWatcher:
    """Reads what the child wrote since the last `sync` and records it in the store."""

    def __init__(self, store: Store, job_id: str, run_dir: Path, total_steps: int) -> None:
        self.store, self.job_id, self.total_steps = store, job_id, total_steps
        self.paths = RunPaths(run_dir)
        self.last_step = store.last_metric_step(job_id)
        self.records: dict[int, dict[str, Any]] = {}
        self.tokens_seen: int | None = None
        self.started: tuple[float, int] | None = None

    def sync(self) -> None:
        for record in self._new_records():
            self._record(record)
        self._checkpoints()

    def _new_records(self) -> list[dict[str, Any]]:
        if not self.paths.metrics.is_file():
            return []
        records = []
        for line in self.paths.metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line being written
                continue
            step = record.get("step")
            if isinstance(step, int):
                self.records.setdefault(step, {}).update(record)
                records.append(record)
        return [r for r in records if "train_loss" in r and r["step"] > self.last_step]

    def _record(self, record: dict[str, Any]) -> None:
        step = record["step"]
        self.last_step = step
        self.tokens_seen = record.get("tokens", self.tokens_seen)
        data = {
            "step": step,
            "train_loss": record["train_loss"],
            "total_steps": self.total_steps,
            "learning_rate": record.get("lr"),
            "tokens": record.get("tokens"),
            "epoch": record.get("epoch"),
        }
        message = f"Step {step}/{self.total_steps}: training loss={record['train_loss']:.4f}"
        self.store.add_event(self.job_id, "info", message, "metrics", data)
        self._estimate(step)

    def _estimate(self, step: int) -> None:
        """Now plus the remaining steps at the pace of the steps seen so far in this run."""
        now = time.time()
        if self.started is None:
            self.started = (now, step)
            return
        began, first = self.started
        if step > first:
            per_step = (now - began) / (step - first)
            finish = int(now + per_step * max(0, self.total_steps - step))
            self.store.set_job(self.job_id, estimated_finish=finish)

    def _checkpoints(self) -> None:
        if not self.paths.checkpoints.is_dir():
            return
        for folder in self.paths.checkpoints.iterdir():
            match = STEP_DIR.match(folder.name)
            if match is None:
                continue
            step = int(match.group(1))
            record = self.records.get(step, {})
            metrics = {"step": step, "train_loss": record.get("train_loss"),
                       "valid_loss": record.get("val_loss")}  # fmt: skip
            self.store.add_checkpoint(self.job_id, step, metrics)
