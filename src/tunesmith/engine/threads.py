"""How many CPU threads each training process uses.

PyTorch starts one intra-op thread per core in every process. Several processes on one
machine then run cores x processes threads that preempt each other, and a job confined to a
few CPUs (taskset, SLURM ``--cpus-per-task``, a container's cpuset) still starts one thread
per core of the whole machine. Both slow CPU training down instead of speeding it up.
"""

from __future__ import annotations

import os

import torch


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def configure_threads(requested: int | None, processes_on_this_machine: int) -> int:
    """Set torch's intra-op threads and return how many: ``requested`` if given, else
    ``OMP_NUM_THREADS`` if the user or launcher set it, else the usable CPUs shared out
    evenly between this machine's processes."""
    if requested is not None:
        threads = requested
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, int(os.environ["OMP_NUM_THREADS"]))
    else:
        threads = max(1, usable_cpus() // max(1, processes_on_this_machine))
    torch.set_num_threads(threads)
    return threads
