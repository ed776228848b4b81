"""A folder's file hashes, written beside its files, so a reader can refuse a changed byte.

`final/` carries one (`MANIFEST.json`) so that export never ships weights that differ from
what training wrote and evaluation measured; exported folders carry one so users can check
what they deploy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tunesmith.errors import TunesmithError

MANIFEST_NAME = "MANIFEST.json"
_CHUNK = 1 << 20


class ManifestError(TunesmithError):
    """A folder's files no longer match the hashes written when it was made."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def folder_hashes(folder: Path, *, skip: str = MANIFEST_NAME) -> dict[str, dict[str, object]]:
    """Every file under ``folder`` (relative posix path → sha256 and size), sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != skip)
    return {
        p.relative_to(folder).as_posix(): {"sha256": file_sha256(p), "size": p.stat().st_size}
        for p in files
    }


def write_manifest(folder: Path, name: str = MANIFEST_NAME) -> Path:
    path = folder / name
    path.write_text(
        json.dumps({"files": folder_hashes(folder, skip=name)}, indent=2) + "\n", encoding="utf-8"
    )
    return path


def verify_manifest(folder: Path, name: str = MANIFEST_NAME) -> bool:
    """Check ``folder`` against its manifest; False when it has none (written before manifests).

    Raises ManifestError naming every file that changed, went missing or appeared.
    """
    path = folder / name
    if not path.is_file():
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ManifestError(f"{path}: not a readable manifest ({error}).") from None
    actual = folder_hashes(folder, skip=name)
    problems = [f"{n}: missing" for n in recorded if n not in actual]
    problems += [f"{n}: not in the manifest" for n in actual if n not in recorded]
    problems += [
        f"{n}: sha256 differs from the manifest"
        for n, entry in actual.items()
        if n in recorded and recorded[n].get("sha256") != entry["sha256"]
    ]
    if problems:
        raise ManifestError(
            f"{folder} does not match {path.name} (" + "; ".join(problems) + "). Its files were "
            "changed after training wrote them; restore them or train the run again."
        )
    return True
