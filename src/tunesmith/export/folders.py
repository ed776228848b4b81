"""Whole-folder writes that never leave a half-written export behind."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunesmith.export.source import ExportDiskFull


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target`` that replaces it only when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        if target.exists():
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, retired)
            shutil.rmtree(retired)
        os.replace(staging, target)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise ExportDiskFull(
                f"the disk filled while writing {target}; nothing was left behind. Free space "
                "on that disk and run the export again."
            ) from None
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
