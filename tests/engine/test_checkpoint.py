"""Checkpoint I/O: exact resume, atomicity under faults and kill -9, refusal of bad files."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tunesmith.engine import checkpoint as ckpt
from tunesmith.engine.checkpoint import (
    CheckpointError,
    DiskFullError,
    capture_rng,
    check_resume_compatible,
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    restore_rng,
    rotate_checkpoints,
    save_checkpoint,
)

BATCH = 8


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _make_training(
    seed: int,
) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))
    return model, optimizer, scheduler


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One step whose data and dropout draw on torch, numpy and python RNGs alike."""
    inputs = torch.randn(BATCH, 4)
    noise = float(np.random.normal()) * 0.1 + random.random() * 0.1
    targets = inputs.sum(dim=1, keepdim=True) + noise
    model.train()
    loss = nn.functional.mse_loss(model(inputs), targets)
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return loss.item()


def _save(run_dir: Path, step: int, model: nn.Module, optimizer, scheduler, **kwargs) -> Path:
    return save_checkpoint(
        run_dir,
        step,
        trainable_state=dict(model.state_dict()),
        optimizer=optimizer,
        scheduler=scheduler,
        train_state={"epoch": 0, "samples_consumed": step * BATCH, "data_fingerprint": "abc"},
        **kwargs,
    )


def _trained_run(run_dir: Path, steps: int) -> tuple[nn.Module, torch.optim.Optimizer, object]:
    """A run with checkpoints at steps 1..steps, returning its live training objects."""
    _seed_everything(0)
    model, optimizer, scheduler = _make_training(seed=0)
    for step in range(1, steps + 1):
        _train_step(model, optimizer, scheduler)
        _save(run_dir, step, model, optimizer, scheduler)
    return model, optimizer, scheduler


def _checkpoints_dir_entries(run_dir: Path) -> list[str]:
    return sorted(entry.name for entry in (run_dir / "checkpoints").iterdir())


def _rewrite_manifest_to_match(folder: Path) -> None:
    """Recompute COMPLETE.json as an attacker who controls every file in the folder would."""
    manifest = json.loads((folder / "COMPLETE.json").read_text())
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        entry["sha256"] = hashlib.sha256(data).hexdigest()
        entry["size"] = len(data)
    (folder / "COMPLETE.json").write_text(json.dumps(manifest))


def test_resume_from_checkpoint_continues_bitwise_like_an_uninterrupted_run(tmp_path: Path):
    total_steps, stop_at = 7, 3

    _seed_everything(0)
    model, optimizer, scheduler = _make_training(seed=0)
    uninterrupted_losses = [_train_step(model, optimizer, scheduler) for _ in range(total_steps)]
    uninterrupted_weights = {k: v.clone() for k, v in model.state_dict().items()}

    _seed_everything(0)
    model, optimizer, scheduler = _make_training(seed=0)
    first_losses = [_train_step(model, optimizer, scheduler) for _ in range(stop_at)]
    saved = _save(tmp_path, stop_at, model, optimizer, scheduler, metric=0.5)

    _seed_everything(1234)
    model, optimizer, scheduler = _make_training(seed=99)
    loaded = load_checkpoint(saved)
    model.load_state_dict(loaded.trainable_state)
    optimizer.load_state_dict(loaded.optimizer_state)
    scheduler.load_state_dict(loaded.scheduler_state)
    restore_rng(loaded.rng_state)
    resumed_losses = [
        _train_step(model, optimizer, scheduler) for _ in range(total_steps - stop_at)
    ]

    assert first_losses + resumed_losses == uninterrupted_losses
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, uninterrupted_weights[name]), name
    assert loaded.step == stop_at
    assert loaded.train_state == {
        "data_fingerprint": "abc",
        "epoch": 0,
        "metric": 0.5,
        "samples_consumed": stop_at * BATCH,
        "step": stop_at,
    }


def test_resume_without_restoring_rng_diverges_so_the_rng_state_matters(tmp_path: Path):
    _seed_everything(0)
    model, optimizer, scheduler = _make_training(seed=0)
    _train_step(model, optimizer, scheduler)
    saved = _save(tmp_path, 1, model, optimizer, scheduler)
    expected_next = _train_step(model, optimizer, scheduler)

    _seed_everything(1234)
    model, optimizer, scheduler = _make_training(seed=0)
    loaded = load_checkpoint(saved)
    model.load_state_dict(loaded.trainable_state)
    optimizer.load_state_dict(loaded.optimizer_state)
    scheduler.load_state_dict(loaded.scheduler_state)

    assert _train_step(model, optimizer, scheduler) != expected_next


def test_tied_weights_of_a_tiny_llama_round_trip(tmp_path: Path, tiny_model):
    state = tiny_model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    optimizer = torch.optim.AdamW(tiny_model.parameters())

    saved = save_checkpoint(
        tmp_path, 1, trainable_state=state, optimizer=optimizer, scheduler=None, train_state={}
    )
    loaded = load_checkpoint(saved)

    assert loaded.trainable_state.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(loaded.trainable_state[name], tensor), name
    assert loaded.scheduler_state is None


def test_views_into_one_storage_are_saved_as_separate_tensors(tmp_path: Path):
    weight = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"full": weight, "first_rows": weight[:2], "transposed": weight.t()}
    optimizer = torch.optim.SGD([nn.Parameter(weight)], lr=0.1)

    saved = save_checkpoint(
        tmp_path, 1, trainable_state=state, optimizer=optimizer, scheduler=None, train_state={}
    )

    loaded = load_checkpoint(saved).trainable_state
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def test_save_without_rng_stores_no_rng_state(tmp_path: Path):
    model, optimizer, scheduler = _make_training(seed=0)
    saved = _save(tmp_path, 1, model, optimizer, scheduler, rng=False)
    assert not (saved / "rng.pt").exists()
    assert load_checkpoint(saved).rng_state is None


def test_layout_and_manifest_list_every_file_with_its_checksum(tmp_path: Path):
    model, optimizer, scheduler = _make_training(seed=0)
    saved = _save(tmp_path, 5, model, optimizer, scheduler)

    assert saved == tmp_path / "checkpoints" / "step-5"
    manifest = json.loads((saved / "COMPLETE.json").read_text())
    expected = {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt"}
    assert set(manifest["files"]) == expected | {"train_state.json"}
    for name, entry in manifest["files"].items():
        data = (saved / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    assert _checkpoints_dir_entries(tmp_path) == ["step-5"]


def test_saving_the_same_step_again_replaces_the_checkpoint(tmp_path: Path):
    model, optimizer, scheduler = _trained_run(tmp_path, steps=1)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    _save(tmp_path, 1, model, optimizer, scheduler)

    loaded = load_checkpoint(tmp_path / "checkpoints" / "step-1")
    assert torch.equal(loaded.trainable_state["0.weight"], model[0].weight)
    assert _checkpoints_dir_entries(tmp_path) == ["step-1"]


@pytest.mark.parametrize("bad_value", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_and_nothing_is_written(tmp_path: Path, bad_value: float):
    model, optimizer, scheduler = _trained_run(tmp_path, steps=1)
    with torch.no_grad():
        model[3].weight[0, 5] = bad_value

    with pytest.raises(CheckpointError, match=r"NaN or Inf \(3\.weight\)"):
        _save(tmp_path, 2, model, optimizer, scheduler)

    assert _checkpoints_dir_entries(tmp_path) == ["step-1"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"


def test_state_that_weights_only_load_could_not_read_is_refused_at_save(tmp_path: Path):
    class WarmupWithHelper:
        """A callable LR lambda: LambdaLR saves its __dict__, here holding a function."""

        def __init__(self) -> None:
            self.shape = math.sqrt

        def __call__(self, step: int) -> float:
            return 1.0

    model, optimizer, _ = _make_training(seed=0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupWithHelper())

    with pytest.raises(CheckpointError, match=r"scheduler\.pt\['lr_lambdas'\]\[0\]\['shape'\]"):
        _save(tmp_path, 1, model, optimizer, scheduler)
    assert not (tmp_path / "checkpoints").exists()


def _fail_writes_after(monkeypatch: pytest.MonkeyPatch, budget: int, error: OSError) -> None:
    """Make os.write accept ``budget`` more bytes in total, then raise ``error``."""
    real_write = os.write
    remaining = [budget]

    def write_until_budget(fd: int, data) -> int:
        if remaining[0] <= 0:
            raise error
        written = real_write(fd, bytes(data[: remaining[0]]))
        remaining[0] -= written
        return written

    monkeypatch.setattr(os, "write", write_until_budget)


def test_failure_at_any_byte_of_a_save_leaves_the_previous_checkpoint_newest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    probe = tmp_path / "probe"
    _trained_run(probe, steps=1)
    manifest_path = probe / "checkpoints" / "step-1" / "COMPLETE.json"
    files = json.loads(manifest_path.read_text())["files"]
    total_bytes = sum(entry["size"] for entry in files.values()) + manifest_path.stat().st_size
    budgets = {0, 1, total_bytes - 1, *random.Random(7).sample(range(total_bytes), 6)}

    for budget in sorted(budgets):
        run_dir = tmp_path / f"budget-{budget}"
        model, optimizer, scheduler = _trained_run(run_dir, steps=1)
        _train_step(model, optimizer, scheduler)
        with monkeypatch.context() as patch:
            _fail_writes_after(patch, budget, OSError(errno.EIO, "Input/output error"))
            with pytest.raises(CheckpointError, match="Could not write the checkpoint"):
                _save(run_dir, 2, model, optimizer, scheduler)

        assert _checkpoints_dir_entries(run_dir) == ["step-1"], budget
        assert resolve_resume(run_dir, "auto") == run_dir / "checkpoints" / "step-1"
        assert load_checkpoint(run_dir / "checkpoints" / "step-1").step == 1


_KILLED_SAVER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import torch
    from tunesmith.engine.checkpoint import save_checkpoint

    run_dir, slow_file = Path(sys.argv[1]), sys.argv[2]
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.AdamW(model.parameters())
    def save(step):
        save_checkpoint(run_dir, step, trainable_state=model.state_dict(), optimizer=optimizer,
                        scheduler=None, train_state={"epoch": 0})
    save(1)
    real_write = os.write
    def slow_write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(slow_file):
            print("writing " + slow_file, flush=True)
            time.sleep(0.02)
            return real_write(fd, bytes(data[:1024]))
        return real_write(fd, data)
    os.write = slow_write
    save(2)
    print("finished", flush=True)
    """
)


@pytest.mark.parametrize(
    ("slow_file", "leftover"),
    [("trainable.safetensors", ".step-2.tmp-"), ("COMPLETE.json", ".step-2.tmp-")],
    ids=["while-staging", "while-writing-the-manifest"],
)
def test_kill_9_during_a_save_leaves_the_previous_checkpoint_newest(
    tmp_path: Path, slow_file: str, leftover: str
):
    saver = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVER, str(tmp_path), slow_file],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert saver.stdout.readline().strip() == f"writing {slow_file}"
        os.kill(saver.pid, signal.SIGKILL)
    finally:
        saver.wait(timeout=30)
    assert saver.returncode == -signal.SIGKILL

    leftovers = [n for n in _checkpoints_dir_entries(tmp_path) if n.startswith(leftover)]
    assert len(leftovers) == 1, _checkpoints_dir_entries(tmp_path)
    unfinished = tmp_path / "checkpoints" / leftovers[0]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"
    assert load_checkpoint(find_latest_checkpoint(tmp_path)).step == 1
    with pytest.raises(CheckpointError, match="Can't find a valid checkpoint at"):
        resolve_resume(tmp_path, str(unfinished))

    rotate_checkpoints(tmp_path, keep_last=3, best_step=None)
    if leftover.startswith("."):
        assert not unfinished.exists()


@pytest.mark.parametrize(
    "damaged_file", ["trainable.safetensors", "optimizer.pt", "rng.pt", "train_state.json"]
)
def test_a_corrupted_file_is_refused_and_auto_resume_falls_back(tmp_path: Path, damaged_file):
    _trained_run(tmp_path, steps=2)
    damaged = tmp_path / "checkpoints" / "step-2" / damaged_file
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))

    with pytest.raises(
        CheckpointError, match=rf"Can't find a valid checkpoint at .*{damaged_file}"
    ):
        load_checkpoint(tmp_path / "checkpoints" / "step-2")
    assert resolve_resume(tmp_path, "auto") == tmp_path / "checkpoints" / "step-1"


def test_truncated_missing_or_unreadable_files_are_refused(tmp_path: Path):
    _trained_run(tmp_path, steps=4)
    checkpoints = tmp_path / "checkpoints"
    with (checkpoints / "step-4" / "optimizer.pt").open("r+b") as handle:
        handle.truncate(10)
    (checkpoints / "step-3" / "scheduler.pt").unlink()
    (checkpoints / "step-2" / "COMPLETE.json").write_text("{not json")

    for step, reason in [(4, "optimizer.pt has 10 bytes"), (3, "scheduler.pt can't be read")]:
        with pytest.raises(CheckpointError, match=reason):
            load_checkpoint(checkpoints / f"step-{step}")
    with pytest.raises(CheckpointError, match=r"COMPLETE\.json can't be parsed"):
        load_checkpoint(checkpoints / "step-2")
    assert find_latest_checkpoint(tmp_path) == checkpoints / "step-1"


def test_a_manifest_copied_from_another_step_is_refused(tmp_path: Path):
    _trained_run(tmp_path, steps=2)
    checkpoints = tmp_path / "checkpoints"
    manifest = json.loads((checkpoints / "step-2" / "COMPLETE.json").read_text())
    manifest["step"] = 1
    (checkpoints / "step-2" / "COMPLETE.json").write_text(json.dumps(manifest))

    with pytest.raises(CheckpointError, match="belongs to step 1"):
        load_checkpoint(checkpoints / "step-2")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("poisoned_file", ["optimizer.pt", "scheduler.pt", "rng.pt"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path: Path, poisoned_file: str):
    _trained_run(tmp_path, steps=1)
    folder = tmp_path / "checkpoints" / "step-1"
    marker = tmp_path / "payload-ran"
    torch.save({"state": {}, "payload": _RunsCodeWhenUnpickled(marker)}, folder / poisoned_file)
    _rewrite_manifest_to_match(folder)

    with pytest.raises(CheckpointError, match=f"{poisoned_file} holds objects other than tensors"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_rotation_keeps_the_last_k_and_the_best_and_clears_leftovers(tmp_path: Path):
    _trained_run(tmp_path, steps=5)
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / ".step-6.tmp-0123abcd").mkdir()
    (checkpoints / "step-0").mkdir()

    deleted = rotate_checkpoints(tmp_path, keep_last=2, best_step=2)

    assert _checkpoints_dir_entries(tmp_path) == ["step-2", "step-4", "step-5"]
    assert sorted(p.name for p in deleted) == [".step-6.tmp-0123abcd", "step-0", "step-1", "step-3"]
    for step in (2, 4, 5):
        assert load_checkpoint(checkpoints / f"step-{step}").step == step


def test_rotation_orders_by_step_number_not_by_name(tmp_path: Path):
    model, optimizer, scheduler = _make_training(seed=0)
    for step in (9, 10, 11):
        _save(tmp_path, step, model, optimizer, scheduler)

    rotate_checkpoints(tmp_path, keep_last=2, best_step=None)

    assert _checkpoints_dir_entries(tmp_path) == ["step-10", "step-11"]
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-11"


def test_rotation_deletes_nothing_while_no_checkpoint_is_complete(tmp_path: Path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step-1").mkdir(parents=True)
    (checkpoints / "step-2").mkdir()

    assert rotate_checkpoints(tmp_path, keep_last=1, best_step=None) == []
    assert _checkpoints_dir_entries(tmp_path) == ["step-1", "step-2"]


def test_too_little_free_space_refuses_before_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    model, optimizer, scheduler = _trained_run(tmp_path, steps=1)
    previous = json.loads((tmp_path / "checkpoints" / "step-1" / "COMPLETE.json").read_text())
    previous_bytes = sum(entry["size"] for entry in previous["files"].values())
    real_disk_usage = ckpt.shutil.disk_usage
    monkeypatch.setattr(
        ckpt.shutil, "disk_usage", lambda path: real_disk_usage(path)._replace(free=previous_bytes)
    )

    with pytest.raises(DiskFullError) as refused:
        _save(tmp_path, 2, model, optimizer, scheduler)

    error = refused.value
    assert error.bytes_free == previous_bytes
    assert error.bytes_needed >= math.ceil(1.2 * previous_bytes)
    assert error.exit_code == ckpt.DISK_FULL_EXIT_CODE
    assert str(tmp_path / "checkpoints" / "step-2") in str(error)
    assert f"needs about {error.bytes_needed} bytes and {previous_bytes} bytes are free" in str(
        error
    )
    assert _checkpoints_dir_entries(tmp_path) == ["step-1"]


def test_disk_full_during_the_write_keeps_older_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    model, optimizer, scheduler = _trained_run(tmp_path, steps=2)
    _fail_writes_after(monkeypatch, 3000, OSError(errno.ENOSPC, "No space left on device"))

    with pytest.raises(
        DiskFullError, match=r"Not enough disk space to save the checkpoint .*step-3"
    ):
        _save(tmp_path, 3, model, optimizer, scheduler)

    monkeypatch.undo()
    assert _checkpoints_dir_entries(tmp_path) == ["step-1", "step-2"]
    assert load_checkpoint(find_latest_checkpoint(tmp_path)).step == 2


def test_staging_happens_next_to_the_target_never_in_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    other_tmp = tmp_path / "elsewhere"
    other_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(other_tmp))
    run_dir = tmp_path / "run"
    written_paths: set[str] = set()
    real_write = os.write

    def recording_write(fd: int, data) -> int:
        written_paths.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording_write)
    model, optimizer, scheduler = _make_training(seed=0)
    _save(run_dir, 1, model, optimizer, scheduler)
    monkeypatch.undo()

    checkpoints = str(run_dir / "checkpoints") + os.sep
    staged = {p for p in written_paths if Path(p).parent.name.startswith(".step-1.tmp-")}
    assert {Path(p).name for p in staged} == {
        "trainable.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng.pt",
        "train_state.json",
        "COMPLETE.json",
    }
    assert all(p.startswith(checkpoints) for p in written_paths), written_paths
    assert list(other_tmp.iterdir()) == []


def test_resolve_resume_auto_and_explicit_paths(tmp_path: Path):
    assert resolve_resume(tmp_path, "auto") is None
    _trained_run(tmp_path, steps=2)
    newest = tmp_path / "checkpoints" / "step-2"

    assert resolve_resume(tmp_path, "auto") == newest
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-1")).name == "step-1"
    with pytest.raises(
        CheckpointError, match=r"Can't find a valid checkpoint at .*step-7: no such"
    ):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-7"))
    (newest / "COMPLETE.json").unlink()
    with pytest.raises(CheckpointError, match=r"COMPLETE\.json is missing"):
        resolve_resume(tmp_path, str(newest))
    assert resolve_resume(tmp_path, "auto") == tmp_path / "checkpoints" / "step-1"


def test_resume_compatibility_passes_when_equal_and_shows_a_diff_otherwise():
    saved = {
        "data_fingerprint": "abc1234567890def",
        "effective_batch_size": 16,
        "micro_batch_size": 4,
        "gradient_accumulation": 4,
        "world_size": 1,
    }
    check_resume_compatible(saved, dict(saved))

    now = {
        **saved,
        "data_fingerprint": "9f8e7d6c5b4a39281706",
        "micro_batch_size": 2,
        "gradient_accumulation": 8,
    }
    with pytest.raises(CheckpointError) as refused:
        check_resume_compatible(saved, now)

    message = str(refused.value)
    assert "data_fingerprint: saved abc1234567890def now 9f8e7d6c5b4a…" in message
    assert "micro_batch_size: saved 4 now 2" in message
    assert "gradient_accumulation: saved 4 now 8" in message
    assert "world_size" not in message
    assert "--resume-allow-mismatch" in message


def test_resume_compatibility_reports_a_key_the_checkpoint_lacks():
    with pytest.raises(CheckpointError, match="world_size: saved \\(missing\\) now 2"):
        check_resume_compatible({}, {"world_size": 2})


def test_a_staging_folder_is_never_selected_or_loaded(tmp_path: Path):
    _trained_run(tmp_path, steps=1)
    staging = tmp_path / "checkpoints" / f".step-2.tmp-{time.time_ns()}"
    staging.mkdir()
    (staging / "trainable.safetensors").write_bytes(b"partial")

    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-1"
    with pytest.raises(CheckpointError, match="Can't find a valid checkpoint at"):
        load_checkpoint(staging)


def test_every_process_random_state_is_saved_and_given_back_by_rank(tmp_path: Path):
    model, optimizer, scheduler = _make_training(seed=0)
    _seed_everything(1)
    first = capture_rng()
    _seed_everything(2)
    second = capture_rng()
    saved = _save(tmp_path, 1, model, optimizer, scheduler, rng=[first, second])
    assert (saved / "rng.rank1.pt").is_file()
    loaded = load_checkpoint(saved)
    assert len(loaded.rng_states) == 2
    assert torch.equal(loaded.rng_state["torch_cpu"], first["torch_cpu"])
    assert torch.equal(loaded.rng_state_of_rank(1)["torch_cpu"], second["torch_cpu"])
    assert loaded.rng_state_of_rank(2) is None  # saved by fewer processes than asked about
    restore_rng(loaded.rng_state_of_rank(1))
    torch.manual_seed(2)
    expected = torch.rand(3)
    restore_rng(loaded.rng_state_of_rank(1))
    assert torch.equal(torch.rand(3), expected)


def test_a_gathered_optimizer_state_is_saved_instead_of_the_optimizer(tmp_path: Path):
    model, optimizer, scheduler = _make_training(seed=0)
    _train_step(model, optimizer, scheduler)
    gathered = {"state": {"weight": {"step": torch.tensor(1.0)}}, "param_groups": []}
    saved = save_checkpoint(
        tmp_path,
        1,
        trainable_state=dict(model.state_dict()),
        optimizer_state=gathered,
        scheduler=scheduler,
        train_state={},
    )
    assert load_checkpoint(saved).optimizer_state == gathered
    with pytest.raises(ValueError, match="exactly one"):
        save_checkpoint(
            tmp_path, 2, trainable_state={}, optimizer=optimizer, optimizer_state=gathered,
            scheduler=None, train_state={},
        )  # fmt: skip


_KILLED_EXIT = 77
_GATED_OS_CALLS = ("mkdir", "open", "write", "fsync", "replace", "rename", "unlink", "rmdir")


def _resave_in_a_child_killed_at(run_dir: Path, model, optimizer, scheduler, kill_at: int) -> int:
    """Re-save step 2 in a forked child that dies (``os._exit``, no cleanup) right before
    its ``kill_at``-th filesystem call; returns the child's exit code (0: it finished)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            calls = [0]

            def gate(real):
                def gated(*args, **kwargs):
                    if calls[0] == kill_at:
                        os._exit(_KILLED_EXIT)
                    calls[0] += 1
                    return real(*args, **kwargs)

                return gated

            for name in _GATED_OS_CALLS:
                setattr(os, name, gate(getattr(os, name)))
            _save(run_dir, 2, model, optimizer, scheduler)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to kill a save mid-way")
def test_a_kill_at_any_point_of_a_re_save_leaves_a_complete_copy_of_that_step(tmp_path: Path):
    """Promise R1 for a step saved twice (a final save at a periodic step, last-good): the old
    copy must survive until the new one is complete, so resume finds step 2, old or new."""
    outcomes = []
    for kill_at in range(500):
        run_dir = tmp_path / f"kill-{kill_at}"
        _seed_everything(0)
        model, optimizer, scheduler = _make_training(seed=0)
        _train_step(model, optimizer, scheduler)
        _save(run_dir, 2, model, optimizer, scheduler)
        old = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            model[0].weight.add_(1.0)
        new = {k: v.clone() for k, v in model.state_dict().items()}

        code = _resave_in_a_child_killed_at(run_dir, model, optimizer, scheduler, kill_at)
        assert code in (0, _KILLED_EXIT), code
        latest = find_latest_checkpoint(run_dir)
        assert latest is not None, (kill_at, _checkpoints_dir_entries(run_dir))
        loaded = load_checkpoint(latest)
        assert loaded.step == 2
        weight = loaded.trainable_state["0.weight"]
        is_new = torch.equal(weight, new["0.weight"])
        assert is_new or torch.equal(weight, old["0.weight"]), kill_at
        assert resolve_resume(run_dir, "auto") == latest
        outcomes.append((latest.name, is_new))
        # The next rotation (or save) puts a set-aside old copy back in its place.
        rotate_checkpoints(run_dir, keep_last=1, best_step=None)
        assert _checkpoints_dir_entries(run_dir) == ["step-2"], kill_at
        if code == 0:
            assert is_new and latest == run_dir / "checkpoints" / "step-2"
            break
    else:
        pytest.fail("the re-save never finished within 500 filesystem calls")
    assert any(name.startswith(".step-2.old-") for name, _ in outcomes), outcomes
    assert ("step-2", False) in outcomes and ("step-2", True) in outcomes


def test_rotation_never_deletes_outside_the_run(tmp_path: Path):
    run_dir = tmp_path / "run"
    other = tmp_path / "other-run" / "checkpoints"
    _trained_run(other.parent, steps=2)
    _trained_run(run_dir, steps=3)
    (run_dir / "checkpoints" / "step-0").symlink_to(other / "step-1", target_is_directory=True)
    (run_dir / "checkpoints" / ".step-0.tmp-x").symlink_to(other / "step-2")

    deleted = rotate_checkpoints(run_dir, keep_last=1, best_step=None)

    assert sorted(p.name for p in deleted) == ["step-1", "step-2"]
    assert _checkpoints_dir_entries(other.parent) == ["step-1", "step-2"]
    assert load_checkpoint(other / "step-1").step == 1


def test_a_checkpoints_folder_that_leads_elsewhere_is_refused(tmp_path: Path):
    other = tmp_path / "other-run"
    _trained_run(other, steps=2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(other / "checkpoints", target_is_directory=True)

    with pytest.raises(CheckpointError, match="leads outside the run directory"):
        rotate_checkpoints(run_dir, keep_last=1, best_step=None)
    with pytest.raises(CheckpointError, match="leads outside the run directory"):
        find_latest_checkpoint(run_dir)
    assert _checkpoints_dir_entries(other) == ["step-1", "step-2"]


def test_resume_from_a_checkpoint_of_another_run_is_refused(tmp_path: Path):
    other = tmp_path / "other-run"
    _trained_run(other, steps=1)
    run_dir = tmp_path / "run"
    _trained_run(run_dir, steps=1)
    sneaky = run_dir / "checkpoints" / ".." / ".." / "other-run" / "checkpoints" / "step-1"

    for path in (other / "checkpoints" / "step-1", sneaky):
        with pytest.raises(CheckpointError, match="not a folder of this run's checkpoints"):
            resolve_resume(run_dir, str(path))
    assert resolve_resume(run_dir, str(run_dir / "checkpoints" / "step-1")).name == "step-1"
