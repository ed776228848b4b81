"""What an export starts from: a finished run whose `final/` still holds what training wrote."""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import RunConfig
from tunesmith.engine.checkpoint import DISK_FULL_EXIT_CODE
from tunesmith.export.errors import ExportError
from tunesmith.manifest import verify_manifest
from tunesmith.runs import RunError, RunPaths, read_run_config


class ExportDiskFull(ExportError):
    """The disk filled while writing; nothing partial was left behind."""

    exit_code = DISK_FULL_EXIT_CODE


@dataclass(frozen=True)
class ExportSource:
    run_dir: Path
    config: RunConfig
    final_verified: bool
    """False for runs written before `final/` carried a manifest: their bytes cannot be checked."""

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run_dir)

    @property
    def name(self) -> str:
        return self.run_dir.resolve().name

    def out_dir(self, target: str) -> Path:
        return self.paths.root / "export" / target


def open_run(run_dir: Path) -> ExportSource:
    """The run, refused unless training finished and `final/` matches its hashes."""
    config = read_run_config(run_dir)
    final = RunPaths(run_dir).final
    if not final.is_dir():
        raise RunError(
            f"{final} is missing: the run has not finished training, so there is nothing to "
            f"export. Finish it with `tunesmith train --resume auto` on its config."
        )
    return ExportSource(run_dir=run_dir, config=config, final_verified=verify_manifest(final))


@contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it only when the block succeeds; a
    failure (a full disk included) removes it, so no partial file is ever left at ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield staging
        os.replace(staging, target)
    except OSError as error:
        raise disk_full_or(error, target) from None
    finally:
        if staging.exists():
            staging.unlink()


def disk_full_or(error: OSError, target: Path) -> Exception:
    """The error to raise for a failed write: ExportDiskFull when the disk filled."""
    if error.errno != errno.ENOSPC:
        return error
    return ExportDiskFull(
        f"the disk filled while writing {target}; nothing was left behind. Free space on "
        "that disk (or export a smaller --quant) and run the export again."
    )
