"""A succeeded job's result file, as OpenAI gives one: the per-step training metrics as
CSV, stored like an upload (``purpose = "fine-tune-results"``) and listed in the job's
``result_files``, so ``client.files.content(job.result_files[0])`` downloads it."""

from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

from tunesmith.jobs.store import Store, new_id

RESULTS_PURPOSE = "fine-tune-results"
RESULTS_NAME = "step_metrics.csv"
COLUMNS = (("step", "step"), ("train_loss", "train_loss"), ("valid_loss", "val_loss"),
           ("learning_rate", "lr"), ("tokens", "tokens"), ("epoch", "epoch"))  # fmt: skip
"""CSV column → the ``metrics.jsonl`` key it comes from (OpenAI's names where it has one)."""


def metrics_csv(records: dict[int, dict[str, Any]]) -> bytes:
    """One row per logged step, in step order; a value a step did not log is empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([column for column, _ in COLUMNS])
    for step in sorted(records):
        record = records[step]
        writer.writerow(["" if record.get(key) is None else record[key] for _, key in COLUMNS])
    return out.getvalue().encode("utf-8")


def add_result_file(store: Store, records: dict[int, dict[str, Any]]) -> str:
    """Write the CSV under the workspace's files, named by its new id; returns the id."""
    payload = metrics_csv(records)
    file_id = new_id("file")
    (store.workspace.files / f"{file_id}.csv").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    store.add_file(file_id, RESULTS_NAME, RESULTS_PURPOSE, len(payload), digest, ".csv")
    return file_id
