"""Process-level settings that make CPU training lean.

glibc raises its mmap threshold dynamically as large blocks are freed, after which
freed activation buffers stay in the heap instead of going back to the OS. Over a
training step this fragments the heap until peak RSS is several times the memory
actually live (measured: 3.9 GB RSS for 1.0 GB live with gradient checkpointing on
SmolLM2). A fixed threshold keeps large tensors in their own mappings, returned on free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
LARGE_BLOCK_BYTES = 64 * 1024


def return_freed_memory_to_os() -> bool:
    """Pin glibc's mmap/trim thresholds; returns False where this is not glibc (no-op)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES) == 1
    return ok and mallopt(M_TRIM_THRESHOLD, LARGE_BLOCK_BYTES) == 1
