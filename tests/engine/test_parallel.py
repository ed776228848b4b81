"""Choosing how processes share the model, and how many CPU threads each one runs.

The multi-process numerics (two processes equal one, exact resume) are tested with torchrun
in tests/test_distributed.py; these are the decisions made before any process group exists.
"""

from __future__ import annotations

import os

import pytest
import torch

from tunesmith.engine.parallel import (
    ParallelError,
    Processes,
    Replicated,
    build_parallel,
    strategy_from_launcher,
)
from tunesmith.engine.threads import configure_threads, usable_cpus
from tunesmith.methods import get_method
from tunesmith.objectives import get_objective


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_one_process_runs_whole_whatever_the_strategy(tiny_model) -> None:
    parallel = build_parallel(
        "fsdp", tiny_model, get_objective("sft"), Processes(), method=get_method("qlora")
    )
    assert isinstance(parallel, Replicated)


@pytest.mark.parametrize(
    ("method", "objective", "named"),
    [("qlora", "sft", "method 'qlora'"), ("lora", "rlhf", "objective 'rlhf'")],
)
def test_fsdp_refuses_what_it_cannot_shard_and_names_the_fix(
    tiny_model, method: str, objective: str, named: str
) -> None:
    two = Processes(world_size=2, rank=0, local_world_size=2)
    with pytest.raises(ParallelError, match=named) as raised:
        build_parallel("fsdp", tiny_model, get_objective(objective), two, method=get_method(method))
    assert "train.strategy=ddp" in str(raised.value)


def test_accelerate_launch_flags_choose_the_strategy(monkeypatch) -> None:
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert strategy_from_launcher("ddp") == "ddp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert strategy_from_launcher("ddp") == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ParallelError, match=r"train\.strategy=fsdp"):
        strategy_from_launcher("ddp")


def test_threads_are_shared_between_the_processes_of_a_machine(
    monkeypatch, restore_threads
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("tunesmith.engine.threads.usable_cpus", lambda: 8)
    assert configure_threads(None, 1) == 8
    assert configure_threads(None, 2) == torch.get_num_threads() == 4
    assert configure_threads(None, 16) == 1


def test_explicit_threads_win_over_the_environment(monkeypatch, restore_threads) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert configure_threads(None, 2) == 3
    assert configure_threads(2, 2) == torch.get_num_threads() == 2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_usable_cpus_follows_the_affinity_mask_not_the_machine() -> None:
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})  # as taskset or a SLURM cpuset would
        assert usable_cpus() == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cpus() == len(before)
