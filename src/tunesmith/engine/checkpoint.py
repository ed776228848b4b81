"""Checkpoint storage for exact resume: atomic saves, verified loads, rotation.

A checkpoint is the whole state a run needs to continue as if it had never stopped:
the trainable weights, optimizer, LR scheduler, every RNG and the loop's counters.
``run_dir/checkpoints/step-<N>/`` holds::

    trainable.safetensors   the weights that train (adapter or full model)
    optimizer.pt            optimizer.state_dict()   (tensors and plain values only)
    scheduler.pt            scheduler.state_dict()   (tensors and plain values only)
    rng.pt                  python, numpy, torch CPU and CUDA generator states (rank 0)
    rng.rank<R>.pt          the same for every other process of a multi-process run
    train_state.json        step, epoch, samples consumed, fingerprints, batch sizes, ...
    COMPLETE.json           sha256 and size of every file above, written last

Why it is built this way (promises R1-R3, R9, R10, R12):

* A save stages into ``checkpoints/.step-<N>.tmp-<uuid>/`` next to the target, never in
  ``/tmp``, so the final ``os.replace`` is a rename on one filesystem (no EXDEV, no small
  ``$TMPDIR``). Every file and directory is fsynced, ``COMPLETE.json`` is written last into
  the staging folder, and only then is the folder renamed into place: a folder without a
  valid manifest is, by definition, not a checkpoint. A crash, ``kill -9`` or full disk at any
  byte therefore leaves the previous checkpoint as the newest.
* Saving a step that already has a checkpoint moves the old copy aside
  (``.step-<N>.old-<uuid>/``) only once the new one is complete, renames the new one in and
  then deletes the old; a crash between the two renames leaves the old copy, which the
  finder accepts and the next save puts back. A step is never lost to its own re-save.
* Rotation and resume stay inside the run: the ``checkpoints`` folder, every ``step-<N>``
  folder and an explicit ``--resume`` path are resolved and must lie in the run's own
  ``checkpoints`` folder (no symlink or ``..`` leads out), so a misnamed run never deletes or
  loads another run's checkpoints.
* Loading verifies every checksum on the very bytes it then deserializes, and reads the
  ``.pt`` files with ``torch.load(weights_only=True)``, so a tampered file can neither be
  half-trusted nor run code.
* Weights with NaN/Inf are refused before anything is written: a bad save never replaces a
  good one.

This layer never prints: it returns values and raises ``CheckpointError``; the loop talks.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import random
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from tunesmith.errors import TunesmithError

CHECKPOINTS_DIRNAME = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
TRAIN_STATE_FILE = "train_state.json"
COMPLETE_FILE = "COMPLETE.json"
MANIFEST_FORMAT_VERSION = 1

DISK_FULL_EXIT_CODE = 74
"""Exit code for a run stopped because a checkpoint did not fit on disk (sysexits EX_IOERR)."""

FREE_SPACE_MARGIN = 1.2
"""A save needs this many times the larger of the last checkpoint and the current state."""

_WRITE_CHUNK_BYTES = 8 * 1024 * 1024
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SET_ASIDE_DIR = re.compile(r"^\.step-(\d+)\.old-[0-9a-f]+$")
_REQUIRED_FILES = (TRAINABLE_FILE, OPTIMIZER_FILE, TRAIN_STATE_FILE)
_PLAIN_LEAVES = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_RESUME_FIX = (
    "Fix: pass --resume auto to take the newest complete checkpoint, or the path of a "
    "step-<N> folder that holds a valid COMPLETE.json."
)


class CheckpointError(TunesmithError):
    """A checkpoint could not be written, found or trusted; the message names path and fix."""


class DiskFullError(CheckpointError):
    """The disk cannot hold the next checkpoint; older checkpoints were left untouched."""

    exit_code = DISK_FULL_EXIT_CODE

    def __init__(self, path: Path, bytes_needed: int, bytes_free: int) -> None:
        self.path = path
        self.bytes_needed = bytes_needed
        self.bytes_free = bytes_free
        super().__init__(
            f"Not enough disk space to save the checkpoint {path}: it needs about "
            f"{bytes_needed} bytes and {bytes_free} bytes are free. Older checkpoints were "
            "kept. Fix: free space on that disk, lower checkpoint.keep_last, or write the "
            "run to a larger disk."
        )


@dataclass
class Checkpoint:
    """Everything a verified checkpoint folder holds, deserialized onto the CPU.

    ``scheduler_state`` is None when the run had no scheduler and ``rng_state`` is None when
    the save was made with ``rng=False``. ``rng_states`` holds one state per process, rank 0
    first (``rng_state`` is that first one).
    """

    path: Path
    step: int
    trainable_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None
    rng_state: dict[str, Any] | None
    train_state: dict[str, Any]
    rng_states: list[dict[str, Any]] = field(default_factory=list)

    def rng_state_of_rank(self, rank: int) -> dict[str, Any] | None:
        """The random state process ``rank`` saved (None if the save had fewer processes)."""
        return self.rng_states[rank] if rank < len(self.rng_states) else None


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    trainable_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    rng: bool | Sequence[Mapping[str, Any]] = True,
    train_state: Mapping[str, Any],
    metric: float | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>/`` atomically and return its path.

    Call only at an optimizer-step boundary. ``train_state`` must be JSON-serializable;
    ``step`` (and ``metric`` when given) are written into it. Raises ``CheckpointError``
    before writing anything if a trainable tensor is NaN/Inf or a state dict holds values
    ``torch.load(weights_only=True)`` could not read back, and ``DiskFullError`` if the disk
    is (or becomes) too full; in every failure the staging folder is removed and older
    checkpoints stay as they were. A complete checkpoint of the same step is replaced.

    ``optimizer_state`` replaces ``optimizer.state_dict()`` when the state was gathered from
    shards; ``rng`` may be the states of every process (rank order) instead of ``True``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if (optimizer is None) == (optimizer_state is None):
        raise ValueError("pass exactly one of optimizer and optimizer_state")
    _refuse_non_finite(trainable_state)
    if optimizer_state is None:
        optimizer_state = optimizer.state_dict()
    _require_weights_only_loadable(optimizer_state, OPTIMIZER_FILE)
    scheduler_state = None if scheduler is None else scheduler.state_dict()
    if scheduler_state is not None:
        _require_weights_only_loadable(scheduler_state, SCHEDULER_FILE)
    payloads = _payloads(
        trainable_state,
        optimizer_state,
        scheduler_state,
        rng,
        _train_state_json(train_state, step, metric),
    )

    checkpoints_dir = _checkpoints_dir(run_dir)
    if not checkpoints_dir.is_dir():
        checkpoints_dir.mkdir(parents=True)
        _fsync_dir(checkpoints_dir.parent)
    _put_back_set_aside(checkpoints_dir)
    final_dir = checkpoints_dir / f"step-{step}"
    estimated = sum(t.numel() * t.element_size() for t in trainable_state.values())
    estimated += sum(t.numel() * t.element_size() for t in _tensors_in(optimizer_state))
    bytes_needed = math.ceil(FREE_SPACE_MARGIN * max(_newest_checkpoint_bytes(run_dir), estimated))
    bytes_free = shutil.disk_usage(checkpoints_dir).free
    if bytes_free < bytes_needed:
        raise DiskFullError(final_dir, bytes_needed, bytes_free)
    _write_and_publish(payloads, step, final_dir, bytes_needed)
    return final_dir


Payload = tuple[str, Callable[[], bytes]]
"""A checkpoint file's name and how to serialize it, called only while writing."""


def _payloads(
    trainable_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    scheduler_state: Mapping[str, Any] | None,
    rng: bool | Sequence[Mapping[str, Any]],
    train_state_json: bytes,
) -> list[Payload]:
    """Every file of a checkpoint but its manifest, in the order they are written."""
    payloads: list[Payload] = [
        (TRAINABLE_FILE, lambda: _safetensors_bytes(trainable_state)),
        (OPTIMIZER_FILE, lambda: _torch_bytes(optimizer_state)),
    ]
    if scheduler_state is not None:
        payloads.append((SCHEDULER_FILE, lambda: _torch_bytes(scheduler_state)))
    rng_states = [capture_rng()] if rng is True else list(rng or [])
    for rank, rng_state in enumerate(rng_states):
        payloads.append((_rng_file(rank), lambda state=rng_state: _torch_bytes(state)))
    payloads.append((TRAIN_STATE_FILE, lambda: train_state_json))
    return payloads


def _write_and_publish(
    payloads: Sequence[Payload], step: int, final_dir: Path, bytes_needed: int
) -> None:
    """Write the files and their manifest into a staging folder beside ``final_dir``, then
    rename it into place; on any failure remove the staging folder and say why."""
    staging_dir = final_dir.parent / f".step-{step}.tmp-{uuid.uuid4().hex}"
    try:
        staging_dir.mkdir()
        manifest_files: dict[str, dict[str, Any]] = {}
        for name, serialize in payloads:
            data = serialize()
            _write_durably(staging_dir / name, data)
            manifest_files[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        manifest = {
            "format_version": MANIFEST_FORMAT_VERSION,
            "step": step,
            "files": manifest_files,
        }
        _write_durably(staging_dir / COMPLETE_FILE, json.dumps(manifest, indent=2).encode())
        _fsync_dir(staging_dir)
        _publish(staging_dir, final_dir)
    except BaseException as error:
        shutil.rmtree(staging_dir, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
            raise DiskFullError(
                final_dir, bytes_needed, shutil.disk_usage(final_dir.parent).free
            ) from error
        if isinstance(error, OSError):
            raise CheckpointError(
                f"Could not write the checkpoint {final_dir}: {error}. Older checkpoints were "
                "kept. Fix: check that the run directory is writable and the disk is healthy."
            ) from error
        raise


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint folder after verifying every file against its ``COMPLETE.json``.

    Raises ``CheckpointError`` ("Can't find a valid checkpoint at <path>") if the folder is
    missing, incomplete, corrupted, or a ``.pt`` file holds anything but tensors and plain
    values (a pickle payload is refused, never executed).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    contents = {
        name: _read_verified(path, name, entry) for name, entry in manifest["files"].items()
    }
    try:
        trainable_state = load_safetensors(contents[TRAINABLE_FILE])
        train_state = json.loads(contents[TRAIN_STATE_FILE])
    except (safetensors.SafetensorError, ValueError) as error:
        raise _invalid(path, f"a file can't be parsed ({error})") from error
    rng_states = []
    while _rng_file(len(rng_states)) in contents:
        name = _rng_file(len(rng_states))
        rng_states.append(_torch_load_safely(path, name, contents[name]))
    return Checkpoint(
        path=path,
        step=manifest["step"],
        trainable_state=trainable_state,
        optimizer_state=_torch_load_safely(path, OPTIMIZER_FILE, contents[OPTIMIZER_FILE]),
        scheduler_state=_torch_load_safely(path, SCHEDULER_FILE, contents.get(SCHEDULER_FILE)),
        rng_state=rng_states[0] if rng_states else None,
        train_state=train_state,
        rng_states=rng_states,
    )


def _rng_file(rank: int) -> str:
    return RNG_FILE if rank == 0 else f"rng.rank{rank}.pt"


def capture_rng() -> dict[str, Any]:
    """Snapshot python ``random``, numpy's global generator, torch CPU and every CUDA device.

    Everything is turned into tensors and plain values so the snapshot round-trips through
    ``torch.load(weights_only=True)``.
    """
    version, internal, gauss_next = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": {
            "version": version,
            "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(rng_state: Mapping[str, Any]) -> None:
    """Put every generator back to the state ``capture_rng`` recorded.

    Raises ``CheckpointError`` if the checkpoint holds CUDA generator states for a different
    number of devices than this process sees, since the random streams would then differ.
    """
    cuda_states = list(rng_state["torch_cuda"])
    visible_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_states and len(cuda_states) != visible_devices:
        raise CheckpointError(
            f"The checkpoint holds random states for {len(cuda_states)} CUDA devices but this "
            f"process sees {visible_devices}. Fix: resume with the same CUDA_VISIBLE_DEVICES."
        )
    python_state = rng_state["python"]
    random.setstate(
        (
            python_state["version"],
            tuple(python_state["internal"].tolist()),
            python_state["gauss_next"],
        )
    )
    numpy_state = rng_state["numpy"]
    np.random.set_state(
        {
            "bit_generator": numpy_state["bit_generator"],
            "state": {
                "key": numpy_state["key"].numpy().astype(np.uint32),
                "pos": numpy_state["pos"],
            },
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(rng_state["torch_cpu"])
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)


def find_latest_checkpoint(run_dir: Path) -> Path | None:
    """Return the newest checkpoint whose files all match its ``COMPLETE.json``, else None.

    Staging folders (``.step-N.tmp-*``) and folders without a valid manifest are never
    returned; a corrupted newest checkpoint makes the next older one the answer. The old
    copy a re-save of step N set aside (``.step-N.old-*``) counts as step N when a crash
    left no complete ``step-N``.
    """
    for step_dir in reversed(_step_dirs(run_dir, set_aside=True)):
        if _is_valid(step_dir):
            return step_dir
    return None


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """Turn the ``--resume`` option into a checkpoint path.

    ``"auto"`` gives the newest complete checkpoint or None (the caller logs that the run
    starts fresh). Any other value is a path that must be a valid checkpoint; a missing or
    incomplete one raises ``CheckpointError`` rather than silently starting over.
    """
    if resume == "auto":
        return find_latest_checkpoint(run_dir)
    path = Path(resume)
    checkpoints_dir = _checkpoints_dir(run_dir).resolve()
    if path.resolve().parent != checkpoints_dir:
        raise _invalid(
            path,
            f"it is not a folder of this run's checkpoints ({checkpoints_dir}); a run resumes "
            "only from its own checkpoints",
        )
    manifest = _read_manifest(path)
    for name, entry in manifest["files"].items():
        _verify_streaming(path, name, entry)
    return path


def resume_differences(
    saved_train_state: Mapping[str, Any], current: Mapping[str, Any]
) -> list[str]:
    """One line per setting in ``current`` that differs from the one saved (a key the
    checkpoint lacks counts as changed)."""
    missing = "(missing)"
    return [
        f"  {key}: saved {_short(saved_train_state.get(key, missing))} now {_short(current[key])}"
        for key in current
        if saved_train_state.get(key, missing) != current[key]
    ]


def check_resume_compatible(
    saved_train_state: Mapping[str, Any], current: Mapping[str, Any]
) -> None:
    """Refuse to resume when any setting in ``current`` differs from the one saved, with a
    diff of what changed.

    Exact resume only holds for the same data in the same order with the same batches and
    schedule; a mismatch is an error the caller may downgrade (``--resume-allow-mismatch``)
    to a warning.
    """
    differences = resume_differences(saved_train_state, current)
    if differences:
        raise CheckpointError(
            "Can't resume: the run differs from the one that saved the checkpoint, so the "
            "resumed run would not match an uninterrupted one:\n"
            + "\n".join(differences)
            + "\nFix: resume with the same data and batch settings, start a fresh run, or "
            "pass --resume-allow-mismatch to accept a run that is no longer reproducible."
        )


def rotate_checkpoints(run_dir: Path, keep_last: int, best_step: int | None) -> list[Path]:
    """Delete complete checkpoints older than the newest ``keep_last``, except the best one.

    Call right after a save returned, so the newest checkpoint is already COMPLETE; nothing
    is deleted while no complete checkpoint exists. Leftovers of interrupted saves (staging
    folders, step folders without a manifest) are removed too. Returns the deleted folders.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    checkpoints_dir = _checkpoints_dir(run_dir)
    if checkpoints_dir.is_dir():
        _put_back_set_aside(checkpoints_dir)
    step_dirs = _step_dirs(run_dir)
    complete = [d for d in step_dirs if _has_manifest(d)]
    if not complete:
        return []
    kept = set(complete[-keep_last:])
    if best_step is not None:
        kept.add(checkpoints_dir / f"step-{best_step}")
    newest_complete = step_dirs.index(complete[-1])
    doomed = [d for d in step_dirs[:newest_complete] if d not in kept]
    doomed += [
        d
        for d in checkpoints_dir.iterdir()
        if d.name.startswith(".step-") and d.is_dir() and _inside(d, checkpoints_dir)
    ]
    for folder in doomed:
        shutil.rmtree(folder)
    return doomed


def _checkpoints_dir(run_dir: Path) -> Path:
    """``run_dir/checkpoints``, refused when it resolves to a place outside the run (a
    symlink to another run's folder), because rotation deletes in it."""
    checkpoints_dir = Path(run_dir) / CHECKPOINTS_DIRNAME
    if checkpoints_dir.is_symlink() or (
        checkpoints_dir.exists() and checkpoints_dir.resolve().parent != Path(run_dir).resolve()
    ):
        raise CheckpointError(
            f"{checkpoints_dir} leads outside the run directory {run_dir} "
            f"(it resolves to {checkpoints_dir.resolve()}); tunesmith neither writes nor "
            "deletes checkpoints there. Fix: remove that link and let the run create its own "
            "checkpoints folder."
        )
    return checkpoints_dir


def _inside(folder: Path, checkpoints_dir: Path) -> bool:
    """True for a real folder (not a symlink) directly inside ``checkpoints_dir``."""
    return not folder.is_symlink() and folder.resolve().parent == checkpoints_dir.resolve()


def _put_back_set_aside(checkpoints_dir: Path) -> None:
    """Rename a complete ``.step-N.old-*`` copy back to ``step-N`` when a crash during its
    re-save left no ``step-N``, so rotation and the next save see that step again."""
    for folder in checkpoints_dir.iterdir():
        match = _SET_ASIDE_DIR.match(folder.name)
        if not match or not _inside(folder, checkpoints_dir):
            continue
        target = checkpoints_dir / f"step-{match.group(1)}"
        if not target.exists() and _is_valid(folder):
            os.replace(folder, target)
            _fsync_dir(checkpoints_dir)


def _refuse_non_finite(trainable_state: Mapping[str, torch.Tensor]) -> None:
    bad = [
        name
        for name, tensor in trainable_state.items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise CheckpointError(
            f"Refusing to save a checkpoint: {len(bad)} trainable tensors hold NaN or Inf "
            f"({shown}). The last good checkpoint was kept. Fix: lower the learning rate or "
            "enable gradient clipping, then resume from the last good checkpoint."
        )


def _require_weights_only_loadable(value: Any, where: str) -> None:
    if isinstance(value, (torch.Tensor, *_PLAIN_LEAVES)):
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _require_weights_only_loadable(key, where)
            _require_weights_only_loadable(item, f"{where}[{key!r}]")
        return
    if isinstance(value, list | tuple | set):
        for index, item in enumerate(value):
            _require_weights_only_loadable(item, f"{where}[{index}]")
        return
    raise CheckpointError(
        f"Refusing to save a checkpoint: {where} holds a {type(value).__qualname__}, which "
        "can't be loaded back safely (only tensors and plain values are allowed). Fix: keep "
        "only numbers, strings and tensors in the optimizer and scheduler state."
    )


def _tensors_in(value: Any) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors_in(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors_in(item)


def _train_state_json(train_state: Mapping[str, Any], step: int, metric: float | None) -> bytes:
    if "step" in train_state and train_state["step"] != step:
        raise ValueError(f"train_state['step'] is {train_state['step']} but step is {step}")
    state = {**train_state, "step": step}
    if metric is not None:
        state["metric"] = metric
    try:
        return json.dumps(state, indent=2, sort_keys=True, allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"train_state must hold JSON values with finite numbers only: {error}"
        ) from error


def _safetensors_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialize weights; tensors sharing storage (tied weights, views) are cloned apart."""
    seen_storages: set[tuple[str, int]] = set()
    owned: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        storage_id = (str(tensor.device), tensor.untyped_storage().data_ptr())
        if storage_id in seen_storages:
            tensor = tensor.clone()
        seen_storages.add(storage_id)
        owned[name] = tensor.contiguous()
    return save_safetensors(owned)


def _torch_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _write_durably(path: Path, data: bytes) -> None:
    """Create ``path`` with ``data`` and fsync it; short writes are resumed, errors propagate."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view[:_WRITE_CHUNK_BYTES])
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staging_dir: Path, final_dir: Path) -> None:
    """Rename the complete staged folder to its final name.

    A same-step folder is moved aside first and deleted only after the new one is in place;
    between the two renames the old copy (``.step-N.old-*``) is what ``find_latest_checkpoint``
    finds, so the step is never missing.
    """
    if final_dir.exists():
        aside = final_dir.with_name(f".{final_dir.name}.old-{uuid.uuid4().hex}")
        os.replace(final_dir, aside)
        try:
            os.replace(staging_dir, final_dir)
        except BaseException:
            os.replace(aside, final_dir)
            raise
        _fsync_dir(final_dir.parent)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staging_dir, final_dir)
    _fsync_dir(final_dir.parent)


def _step_dirs(run_dir: Path, *, set_aside: bool = False) -> list[Path]:
    """Folders named ``step-<N>`` in step order (complete or not); staging folders and
    anything that resolves outside the run's ``checkpoints`` folder excluded.

    With ``set_aside``, old copies moved aside by a re-save (``.step-N.old-*``) are listed
    too, each just before the ``step-N`` of the same step, which is preferred.
    """
    checkpoints_dir = _checkpoints_dir(run_dir)
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for entry in checkpoints_dir.iterdir():
        match = _STEP_DIR.match(entry.name)
        rank = 1
        if not match and set_aside:
            match, rank = _SET_ASIDE_DIR.match(entry.name), 0
        if match and entry.is_dir() and _inside(entry, checkpoints_dir):
            found.append((int(match.group(1)), rank, entry.name, entry))
    return [entry for *_, entry in sorted(found)]


def _invalid(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"Can't find a valid checkpoint at {path}: {reason}. {_RESUME_FIX}")


def _read_manifest(path: Path) -> dict[str, Any]:
    """Parse and sanity-check ``COMPLETE.json``; raise the standard error if it is not usable."""
    manifest_path = path / COMPLETE_FILE
    if not path.is_dir():
        raise _invalid(path, "no such folder")
    if not manifest_path.is_file():
        raise _invalid(path, f"{COMPLETE_FILE} is missing, so the save never finished")
    try:
        manifest = json.loads(manifest_path.read_bytes())
        files = manifest["files"]
        step = manifest["step"]
        well_formed = (
            manifest["format_version"] == MANIFEST_FORMAT_VERSION
            and isinstance(step, int)
            and isinstance(files, dict)
            and all(
                isinstance(e, dict)
                and isinstance(e.get("sha256"), str)
                and isinstance(e.get("size"), int)
                for e in files.values()
            )
        )
    except (ValueError, KeyError, TypeError) as error:
        raise _invalid(path, f"{COMPLETE_FILE} can't be parsed ({error})") from error
    if not well_formed:
        raise _invalid(path, f"{COMPLETE_FILE} is not a tunesmith checkpoint manifest")
    named_step = _STEP_DIR.match(path.name) or _SET_ASIDE_DIR.match(path.name)
    if named_step and int(named_step.group(1)) != step:
        raise _invalid(path, f"{COMPLETE_FILE} belongs to step {step}, not to this folder")
    missing = [name for name in _REQUIRED_FILES if name not in files]
    if missing:
        raise _invalid(path, f"{COMPLETE_FILE} does not list {', '.join(missing)}")
    unsafe = [name for name in files if Path(name).name != name]
    if unsafe:
        raise _invalid(path, f"{COMPLETE_FILE} names files outside the folder: {unsafe}")
    return manifest


def _read_verified(path: Path, name: str, entry: Mapping[str, Any]) -> bytes:
    try:
        data = (path / name).read_bytes()
    except OSError as error:
        raise _invalid(path, f"{name} can't be read ({error.strerror})") from error
    if len(data) != entry["size"]:
        raise _invalid(path, f"{name} has {len(data)} bytes, {COMPLETE_FILE} says {entry['size']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise _invalid(path, f"{name} is corrupted (its sha256 does not match {COMPLETE_FILE})")
    return data


def _verify_streaming(path: Path, name: str, entry: Mapping[str, Any]) -> None:
    digest = hashlib.sha256()
    size = 0
    try:
        with (path / name).open("rb") as handle:
            while chunk := handle.read(_WRITE_CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise _invalid(path, f"{name} can't be read ({error.strerror})") from error
    if size != entry["size"]:
        raise _invalid(path, f"{name} has {size} bytes, {COMPLETE_FILE} says {entry['size']}")
    if digest.hexdigest() != entry["sha256"]:
        raise _invalid(path, f"{name} is corrupted (its sha256 does not match {COMPLETE_FILE})")


def _is_valid(step_dir: Path) -> bool:
    try:
        manifest = _read_manifest(step_dir)
        for name, entry in manifest["files"].items():
            _verify_streaming(step_dir, name, entry)
    except CheckpointError:
        return False
    return True


def _has_manifest(step_dir: Path) -> bool:
    try:
        _read_manifest(step_dir)
    except CheckpointError:
        return False
    return True


def _newest_checkpoint_bytes(run_dir: Path) -> int:
    for step_dir in reversed(_step_dirs(run_dir)):
        try:
            manifest = _read_manifest(step_dir)
        except CheckpointError:
            continue
        return sum(entry["size"] for entry in manifest["files"].values())
    return 0


def _torch_load_safely(path: Path, name: str, data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        buffer = io.BytesIO(data)
        return torch.load(buffer, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise _invalid(
            path,
            f"{name} holds objects other than tensors and plain values, and loading it "
            "could run code, so it was refused",
        ) from error
    except (RuntimeError, EOFError, ValueError) as error:
        raise _invalid(path, f"{name} can't be parsed ({error})") from error


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 16 else text[:12] + "…"
