"""Run a command held to a memory limit: the check that a plan's verdict is right.

The limit is on the child's resident high-water mark (`VmHWM`), the figure the plan
predicts on CPU. `RLIMIT_AS` would limit virtual address space instead, of which PyTorch
reserves gigabytes it never touches (thread stacks, allocator arenas), and cgroups need
privileges; reading the child's own high-water mark every few milliseconds sees the
peak even between two reads, and the child is killed as soon as it passes the limit.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.01


@dataclass(frozen=True)
class LimitedRun:
    returncode: int
    peak_bytes: int
    killed_for_memory: bool
    output: str


def _peak_of(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def run_under_memory_limit(
    command: Sequence[str], limit_bytes: int, *, env: dict[str, str] | None = None
) -> LimitedRun:
    """Run ``command``; kill it the moment its resident peak exceeds ``limit_bytes``."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as log:  # a pipe could fill and block
        child = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=env)
        peak, killed = 0, False
        while child.poll() is None:
            peak = max(peak, _peak_of(child.pid) or 0)
            if peak > limit_bytes:
                child.kill()
                killed = True
            time.sleep(POLL_SECONDS)
        log.seek(0)
        output = log.read()
    return LimitedRun(child.returncode, peak, killed, output)
