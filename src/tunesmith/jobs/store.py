"""The jobs store: files, jobs, events and checkpoints in SQLite (WAL), bytes on disk.

Every change is one transaction, so a server or worker killed at any point leaves a
consistent store (promise "nothing lost"). Uploaded bytes live under
``<workspace>/files/<file id><suffix>``: the name is made here from the id and an
extension from a fixed list, never from anything a request sent (promise S4).
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".jsonl.gz", ".json.gz")
"""Extensions an upload may keep (the data readers pick a format by extension)."""

LEASE_SECONDS = 10.0
"""A worker renews its job's lease more often than this; an expired lease means it died."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, created_at INTEGER, filename TEXT, purpose TEXT, bytes INTEGER,
  sha256 TEXT, suffix TEXT, deleted INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, created_at INTEGER, body TEXT,
  status TEXT, error TEXT, fine_tuned_model TEXT, finished_at INTEGER,
  estimated_finish INTEGER, trained_tokens INTEGER, control TEXT,
  lease_owner TEXT, lease_expires REAL, result_files TEXT);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, job_id TEXT, created_at INTEGER,
  level TEXT, message TEXT, type TEXT, data TEXT);
CREATE TABLE IF NOT EXISTS checkpoints (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE, job_id TEXT, created_at INTEGER,
  step INTEGER, metrics TEXT, UNIQUE(job_id, step));
"""

ACTIVE = ("validating_files", "queued", "running")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


@dataclass(frozen=True)
class Workspace:
    """Where a jobs server and its workers keep everything: the store, uploads and runs."""

    root: Path

    @property
    def database(self) -> Path:
        return self.root / "jobs.sqlite"

    @property
    def files(self) -> Path:
        return self.root / "files"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, job_id: str) -> Path:
        return self.runs / job_id


class Store:
    """One SQLite connection shared by the threads of one process, behind a lock."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = Workspace(Path(workspace).resolve())
        for folder in (self.workspace.root, self.workspace.files, self.workspace.runs):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.workspace.database, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Columns added since a workspace was made (its jobs keep their rows)."""
        columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "result_files" not in columns:
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                self._db.execute("ALTER TABLE jobs ADD COLUMN result_files TEXT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT: one writer at a time across processes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # files -------------------------------------------------------------------------
    def file_path(self, row: sqlite3.Row) -> Path:
        return self.workspace.files / f"{row['id']}{row['suffix']}"

    def add_file(self, file_id: str, filename: str, purpose: str, size: int, sha256: str,
                 suffix: str) -> None:  # fmt: skip
        with self.transaction() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
                (file_id, int(time.time()), filename, purpose, size, sha256, suffix),
            )

    def file(self, file_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,))
        return rows[0] if rows else None

    def files(self) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM files WHERE deleted = 0 ORDER BY created_at DESC")

    def delete_file(self, file_id: str) -> bool:
        row = self.file(file_id)
        if row is None:
            return False
        with self.transaction() as db:
            db.execute("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))
        self.file_path(row).unlink(missing_ok=True)
        return True

    # jobs --------------------------------------------------------------------------
    def add_job(self, job_id: str, body: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, created_at, body, status) VALUES (?, ?, ?, ?)",
                (job_id, int(time.time()), json.dumps(body), "validating_files"),
            )
            _event(db, job_id, "info", "Validating training file", "message", None)

    def job(self, job_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return rows[0] if rows else None

    def jobs_page(self, after: str | None, limit: int) -> tuple[list[sqlite3.Row], bool]:
        """Newest first; ``after`` is the id of the last job of the previous page."""
        start = float("inf")
        if after is not None:
            anchor = self.job(after)
            start = anchor["seq"] if anchor is not None else start
        rows = self.query(
            "SELECT * FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?",
            (start if start != float("inf") else 2**62, limit + 1),
        )
        return rows[:limit], len(rows) > limit

    def set_job(self, job_id: str, message: str | None = None, level: str = "info",
                **fields: Any) -> None:  # fmt: skip
        """Change job fields and log why, in one transaction."""
        with self.transaction() as db:
            _update(db, job_id, fields)
            if message:
                _event(db, job_id, level, message, "message", None)

    def request_control(self, job_id: str, action: str, allowed: tuple[str, ...]) -> bool:
        """Ask the job's worker to cancel or pause; a job no worker holds changes at once."""
        with self.transaction() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] not in allowed:
                return False
            held = row["lease_owner"] is not None and (row["lease_expires"] or 0) > time.time()
            if held:
                db.execute("UPDATE jobs SET control = ? WHERE id = ?", (action, job_id))
                _event(db, job_id, "info", f"{action} requested", "message", None)
            else:
                status = "cancelled" if action == "cancel" else "paused"
                finished = int(time.time()) if status == "cancelled" else None
                _update(db, job_id, {"status": status, "finished_at": finished})
                _event(db, job_id, "info", f"Job {status}", "message", None)
        return True

    def claim_next(self, owner: str) -> sqlite3.Row | None:
        """The oldest waiting job, leased to ``owner``; stale leases are released first."""
        self.release_stale()
        with self.transaction() as db:
            row = db.execute(
                "SELECT * FROM jobs WHERE status IN ('validating_files', 'queued') "
                "AND lease_owner IS NULL ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            expires = time.time() + LEASE_SECONDS
            _update(db, row["id"], {"lease_owner": owner, "lease_expires": expires})
        return self.job(row["id"])

    def renew(self, job_id: str, owner: str) -> str | None:
        """Extend the lease; returns the control request waiting for the worker, if any."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET lease_expires = ? WHERE id = ? AND lease_owner = ?",
                (time.time() + LEASE_SECONDS, job_id, owner),
            )
            row = db.execute("SELECT control FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["control"] if row else None

    def release_stale(self) -> None:
        """A job whose worker stopped renewing goes back to the queue: it never stays
        ``running`` with no worker, and the next worker resumes it from its checkpoint."""
        with self.transaction() as db:
            stale = db.execute(
                "SELECT id, control FROM jobs WHERE lease_owner IS NOT NULL AND lease_expires < ?",
                (time.time(),),
            ).fetchall()
            for row in stale:
                if row["control"] == "cancel":
                    fields = {"status": "cancelled", "finished_at": int(time.time())}
                elif row["control"] == "pause":
                    fields = {"status": "paused"}
                else:
                    fields = {"status": "queued"}
                _update(db, row["id"], {**fields, "lease_owner": None, "control": None})
                message = f"The worker stopped answering; job {fields['status']}"
                _event(db, row["id"], "warn", message, "message", None)

    # events and checkpoints ----------------------------------------------------------
    def add_event(self, job_id: str, level: str, message: str, kind: str = "message",
                  data: dict[str, Any] | None = None) -> None:  # fmt: skip
        with self.transaction() as db:
            _event(db, job_id, level, message, kind, data)

    def events(self, job_id: str, after: str | None, limit: int) -> tuple[list[sqlite3.Row], bool]:
        """Newest first, as OpenAI lists them."""
        start = 2**62
        if after is not None:
            rows = self.query("SELECT seq FROM events WHERE id = ?", (after,))
            start = rows[0]["seq"] if rows else start
        rows = self.query(
            "SELECT * FROM events WHERE job_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (job_id, start, limit + 1),
        )
        return rows[:limit], len(rows) > limit

    def last_metric_step(self, job_id: str) -> int:
        rows = self.query(
            "SELECT data FROM events WHERE job_id = ? AND type = 'metrics' "
            "ORDER BY seq DESC LIMIT 1",
            (job_id,),
        )
        return int(json.loads(rows[0]["data"])["step"]) if rows else 0

    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO checkpoints (id, job_id, created_at, step, metrics) "
                "VALUES (?, ?, ?, ?, ?)",
                (new_id("ftckpt"), job_id, int(time.time()), step, json.dumps(metrics)),
            )

    def checkpoints(self, job_id: str) -> list[sqlite3.Row]:
        return self.query(
            "SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step DESC", (job_id,)
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()


_JOB_FIELDS = frozenset(
    {"status", "error", "fine_tuned_model", "finished_at", "estimated_finish", "trained_tokens",
     "control", "lease_owner", "lease_expires", "result_files"}
)  # fmt: skip


def _update(db: sqlite3.Connection, job_id: str, fields: dict[str, Any]) -> None:
    unknown = set(fields) - _JOB_FIELDS
    if unknown:
        raise KeyError(f"not a job field: {sorted(unknown)}")
    if not fields:
        return
    values = [json.dumps(v) if isinstance(v, dict | list) else v for v in fields.values()]
    assignments = ", ".join(f"{name} = ?" for name in fields)
    db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values, job_id))


def _event(db: sqlite3.Connection, job_id: str, level: str, message: str, kind: str,
           data: dict[str, Any] | None) -> None:  # fmt: skip
    db.execute(
        "INSERT INTO events (id, job_id, created_at, level, message, type, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (new_id("ftevent"), job_id, int(time.time()), level, message, kind,
         json.dumps(data) if data is not None else None),
    )  # fmt: skip
