"""Choosing how processes share the model, and how many CPU threads each one runs.

The multi-process numerics (two processes equal one, exact resume) are tested with torchrun
in tests/engine/test_distributed.py; these are the decisions made before any process group exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing
from tests.conftest import build_tiny_model, build_tiny_tokenizer

from tunesmith.data.records import Source
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import backward_window
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


def _window_in_two_processes(rank: int, workdir: str) -> None:
    """One accumulation window of 4 micro-batches, 2 on each of 2 processes (gloo), with every
    all-reduce counted; the gradients are compared with one process running all 4."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{workdir}/store", rank=rank, world_size=2
    )
    reductions: list[int] = []
    all_reduce = torch.distributed.all_reduce

    def counted(tensor: torch.Tensor, *args, **kwargs):
        reductions.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    torch.distributed.all_reduce = counted
    tokenizer = build_tiny_tokenizer()
    objective = get_objective("sft")
    texts = [f"The capital of France is Paris. {n} plus {n} is {2 * n}." for n in range(8)]
    examples = [
        TokenizedExample(ids, list(ids), Source("facts", n))
        for n, ids in enumerate(tokenizer(texts)["input_ids"])
    ]
    window = [examples[i : i + 2] for i in range(0, 8, 2)]
    tokens = sum(objective.units(example) for example in examples)
    batches = BatchSettings(3, pack=True, row_length=64, batch_size=2, device=torch.device("cpu"))

    model = build_tiny_model(len(tokenizer)).train()
    parallel = Replicated(model, objective, Processes(2, rank, 2))
    loss, _, _ = backward_window(
        model, objective, window[rank::2], window_tokens=tokens, parallel=parallel, batches=batches
    )
    during_backward = list(reductions)
    reductions.clear()
    parallel.finish_gradients(list(model.parameters()), loss)

    alone = build_tiny_model(len(tokenizer)).train()
    alone_loss, _, _ = backward_window(
        alone, objective, window, window_tokens=tokens, batches=batches
    )
    difference = max(
        float((p.grad - q.grad).abs().max())
        for p, q in zip(model.parameters(), alone.parameters(), strict=True)
    )
    result = {
        "during_backward": during_backward,
        "after_window": list(reductions),
        "parameters": len(list(model.parameters())),
        "elements": sum(p.numel() for p in model.parameters()),
        "gradient_difference": difference,
        "loss_difference": abs(float(loss) - float(alone_loss)),
    }
    Path(workdir, f"rank{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def test_ddp_reduces_gradients_in_buckets_during_the_window_s_last_backward(
    tmp_path: Path,
) -> None:
    """DDP, not one all-reduce per parameter after the window: every gradient element is
    reduced once, in fewer reductions than parameters, while backward runs; the first pass of
    the window stays local (no_sync). The sum over processes equals one process's window."""
    torch.multiprocessing.spawn(_window_in_two_processes, args=(str(tmp_path),), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert 1 <= len(result["during_backward"]) < result["parameters"]
        assert sum(result["during_backward"]) == result["elements"]
        assert result["after_window"] == [1]  # the window's loss, for the log
        assert result["gradient_difference"] < 1e-6
        assert result["loss_difference"] < 1e-9
