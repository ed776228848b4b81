"""Whole-folder writes that never leave a half-written export behind."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tunesmith.export.source import disk_full_or


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
        raise disk_full_or(error, target) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging)
