"""What one export wrote and what its verification measured, and `export/report.json`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPORT_NAME = "report.json"


@dataclass
class Artifact:
    path: Path
    role: str
    """What the file is: "model", "adapter", "base", "modelfile", …"""
    verification: dict[str, Any] | None = None

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else _tree_size(self.path)


def _shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@dataclass
class ExportResult:
    target: str
    out_dir: Path
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Lines for the summary: the command to run, what matched training, …"""

    def record(self, run_export_dir: Path) -> Path:
        """Merge this export into `export/report.json`: per target, one entry per file, so
        exports of several quants (made at once or one by one) build one table."""
        path = run_export_dir / REPORT_NAME
        report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        entry = report.get(self.target)
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), dict):
            entry = report[self.target] = {"files": {}}
        for artifact in self.artifacts:
            entry["files"][_shown(artifact.path, run_export_dir)] = {
                "role": artifact.role,
                "size_bytes": artifact.size,
                "verification": artifact.verification,
            }
        entry["warnings"] = self.warnings
        entry["notes"] = self.notes
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, path)
        return path
