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
        """Merge this export's entry into `export/report.json` (one key per target)."""
        path = run_export_dir / REPORT_NAME
        report = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        report[self.target] = {
            "artifacts": [
                {
                    "path": str(a.path.relative_to(run_export_dir)),
                    "role": a.role,
                    "size_bytes": a.size,
                    "verification": a.verification,
                }
                for a in self.artifacts
            ],
            "warnings": self.warnings,
            "notes": self.notes,
        }
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, path)
        return path
