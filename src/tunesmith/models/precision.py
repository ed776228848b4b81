"""Which precision forward passes compute in, decided once per process for this machine.

On CPU the weights, gradients and optimizer state stay fp32 and only the forward pass is
autocast: bf16 matrix products are 2-4x faster where the CPU computes bf16 natively
(AVX512-BF16, AMX, Arm BF16) and ~100x slower where it emulates it, so `auto` asks the
CPU's flags, and a short matmul probe, before it chooses. Training, validation,
evaluation and serving all go through `resolve_precision`, so a run computes the same
way in every stage on one machine.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
"""x86 (/proc/cpuinfo flags) and Arm (Features) names of native bf16 arithmetic."""

PROBE_SIZE = 512
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_DTYPES = {name: dtype for dtype, name in _NAMES.items()}


class PrecisionError(TunesmithError):
    """A precision this device cannot train in; the message names the setting to use."""


@dataclass(frozen=True)
class MatmulProbe:
    """Best-of-a-few timings of one square matrix product in fp32 and bf16."""

    size: int
    fp32_gflops: float
    bf16_gflops: float

    @property
    def bf16_speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops


@dataclass(frozen=True)
class Precision:
    """What the model's weights are stored in, what its forward passes compute in, why,
    and what the user should be warned about (None: nothing)."""

    weights: torch.dtype
    compute: torch.dtype
    reason: str
    warning: str | None = None

    @property
    def name(self) -> str:
        """The config spelling of the compute precision (fp32, bf16, fp16)."""
        return _NAMES[self.compute]

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        """Autocast to the compute dtype; a no-op in fp32. Autocast keeps the loss ops it
        lists as fp32 (and tunesmith's losses upcast logits), so only matmuls run in bf16."""
        if self.compute == torch.float32:
            yield
            return
        with torch.autocast(device_type=device.type, dtype=self.compute):
            yield


def matmul_gflops(dtype: torch.dtype, size: int, repeats: int = 3) -> float:
    """GFLOP/s of a size x size matrix product in `dtype` on CPU (best of `repeats`)."""
    left = torch.randn(size, size).to(dtype)
    right = torch.randn(size, size).to(dtype)
    left @ right  # warm-up: the kernel is chosen and its buffers allocated on first use
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / max(best, 1e-9) / 1e9


@functools.cache
def probe_matmul(size: int = PROBE_SIZE) -> MatmulProbe:
    """Time fp32 against bf16 once per process (~0.1 s with native bf16, ~1 s without)."""
    return MatmulProbe(
        size, matmul_gflops(torch.float32, size), matmul_gflops(torch.bfloat16, size)
    )


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The CPU's feature flags (Linux x86 `flags`, Arm `Features`); None where unreadable."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """The precision a run asking for `requested` (auto, fp32, bf16, fp16) gets on `device`."""
    if device.type != "cpu":
        return _accelerator_precision(requested)
    if requested == "fp32":
        return Precision(torch.float32, torch.float32, "asked for (train.precision: fp32)")
    if requested == "fp16":
        raise PrecisionError(
            "train.precision: fp16 is not supported on CPU (no loss scaling there, and CPUs "
            "rarely compute fp16 natively). Use train.precision: auto (bf16 where the CPU "
            "computes it natively, else fp32), bf16 or fp32."
        )
    native, evidence = _native_bf16()
    if requested == "auto":
        if native:
            return Precision(torch.float32, torch.bfloat16, f"auto: {evidence}")
        return Precision(torch.float32, torch.float32, f"auto: {evidence}")
    warning = None
    if not native:
        warning = (
            f"train.precision is bf16, but this CPU does not compute bf16 natively ({evidence}): "
            "training runs far slower than in fp32. Fix: set train.precision: auto (fp32 on "
            "this CPU) or fp32."
        )
    return Precision(torch.float32, torch.bfloat16, "asked for (train.precision: bf16)", warning)


def _native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively, and the evidence in words: its flags
    decide where the OS lists them (the same answer every run), the probe elsewhere."""
    probe = probe_matmul()
    measured = (
        f"a {probe.size}x{probe.size} matmul runs {probe.bf16_gflops:.0f} GFLOP/s in bf16, "
        f"{probe.fp32_gflops:.0f} in fp32 ({_factor(probe.bf16_speedup)})"
    )
    flags = cpu_flags()
    if flags is None:
        native = probe.bf16_speedup >= 1.5
        return native, f"{measured}; CPU flags unreadable, so the timing decides"
    found = sorted(flags & NATIVE_BF16_FLAGS)
    if found:
        return True, f"the CPU computes bf16 natively ({', '.join(found)}); {measured}"
    return False, f"no native bf16 on this CPU (no avx512_bf16/amx_bf16 flag); {measured}"


def _factor(speedup: float) -> str:
    if speedup >= 1:
        return f"{speedup:.1f}x faster in bf16"
    return f"{1 / speedup:.0f}x slower in bf16"


def _accelerator_precision(requested: str) -> Precision:
    """On CUDA the weights themselves are stored in the half precision (as before)."""
    if requested == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return Precision(torch.bfloat16, torch.bfloat16, "auto: the GPU supports bf16")
        return Precision(torch.float32, torch.float32, "auto: the GPU lacks bf16")
    dtype = _DTYPES[requested]
    return Precision(dtype, dtype, f"asked for (train.precision: {requested})")
