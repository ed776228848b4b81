"""Promotion pointers: a file naming the run a model id should serve, followed live.

`tunesmith retrain` promotes a challenger by rewriting ``<family>.promoted.json``
(``{"run_dir": ...}``, replaced atomically). ``tunesmith serve NAME=FILE`` (or just
``FILE``) serves the run it names, and every chat or completion request first checks
the file's modification time (one ``stat``): when it changed, the named run is loaded
and swapped in under the same model id, so clients pick up the promoted version
without a restart and without a failed request.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tunesmith.errors import TunesmithError

POINTER_SUFFIX = ".promoted.json"


class PointerError(TunesmithError):
    """A promotion pointer that cannot be read; the message names the file and the fix."""


def is_pointer(path: Path) -> bool:
    return path.name.endswith(POINTER_SUFFIX) and path.is_file()


def read_pointer(path: Path) -> Path:
    """The run directory a pointer names (relative paths are relative to the pointer)."""
    try:
        target = json.loads(path.read_text(encoding="utf-8"))["run_dir"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PointerError(
            f"{path}: not a promotion pointer ({error}). It must hold "
            '{"run_dir": "<run directory>"}, as `tunesmith retrain` writes it.'
        ) from None
    run_dir = Path(target)
    return run_dir if run_dir.is_absolute() else path.parent / run_dir


def write_pointer(path: Path, run_dir: Path, **details: object) -> None:
    """Point ``path`` at ``run_dir``; readers see the old or the new file, never half of one."""
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(
        json.dumps({"run_dir": str(run_dir.resolve()), **details}, indent=2), encoding="utf-8"
    )
    os.replace(staging, path)


@dataclass
class FollowedPointer:
    """A pointer the server follows: the model id it feeds and the version it last loaded."""

    path: Path
    model_id: str
    stamp: int
    run_dir: Path

    def changed(self) -> Path | None:
        """The newly named run when the file changed since it was last loaded, else None."""
        stamp = self.path.stat().st_mtime_ns
        if stamp == self.stamp:
            return None
        self.stamp = stamp
        run_dir = read_pointer(self.path)
        if run_dir.resolve() == self.run_dir.resolve():
            return None
        self.run_dir = run_dir
        return run_dir
