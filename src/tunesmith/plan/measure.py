"""The measured side of a plan: peak memory and throughput of the process that trained.

On CPU the peak is the process's resident high-water mark (`VmHWM` in /proc/self/status,
else `ru_maxrss`), which is what the operating system holds the run to; on CUDA it is
`torch.cuda.max_memory_allocated`, the figure the plan's tensor count predicts.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        text = _STATUS.read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def resident_bytes() -> int:
    """This process's resident memory now (0 where the OS does not say)."""
    kib = _status_kib("VmRSS")
    return 0 if kib is None else kib * 1024


def peak_resident_bytes() -> int:
    """This process's resident high-water mark since it started."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def peak_memory_bytes(device: torch.device) -> tuple[int, str]:
    """The peak the plan is checked against on ``device``, and what it is."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    return peak_resident_bytes(), "peak RSS"
