"""Machines a plan can be made for: this one, or a named accelerator from a table.

`cpu` and `cuda` are the machine the plan runs on, measured (RAM from /proc/meminfo, the
GPU's memory from CUDA, CPU throughput from a matmul probe). The named GPUs come with
their memory, dense bf16 peak (vendor datasheets) and an hourly price; their
`efficiency` (the share of peak a fine-tuning step reaches) is an assumption until
`benchmarks/gpu_check.sh` measures it, and `docs/plan.md` says which figures were measured.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tunesmith.errors import TunesmithError

GB = 1000**3
GIB = 1024**3

CPU_EFFICIENCY = 0.17
"""Share of the matmul probe's GFLOP/s a training step reaches on CPU: the median of the
adapter runs of `benchmarks/plan_accuracy.py` (0.12-0.19 on 2 shared cores; full
fine-tuning reaches less). A rough guide, used only without --calibrate."""

GPU_EFFICIENCY = 0.35
"""Share of dense bf16 peak assumed for small-model fine-tuning on a GPU (not measured)."""

CPU_HEAP_RETENTION = 1.4
"""Peak RSS per byte of a step's working set on CPU: glibc keeps freed activation memory
in its heap and the next step's differently sized tensors do not all fit the holes.
Fitted by `benchmarks/plan_accuracy.py` (docs/plan.md); 1.0 would be a perfect allocator."""

CUDA_CONTEXT_BYTES = 600 * 1024**2
"""CUDA context and cuBLAS workspaces: outside `max_memory_allocated`, inside the card."""


class UnknownDeviceError(TunesmithError):
    """A --device name not in the table; the message lists the names."""


@dataclass(frozen=True)
class DeviceSpec:
    """What a plan needs to know of a machine."""

    name: str
    kind: str
    """'cpu' or 'cuda': which precision rules and which overhead apply."""
    memory_bytes: int
    peak_flops: float
    """Dense peak of the compute precision, FLOP/s (CPU: measured by the matmul probe)."""
    efficiency: float
    price_per_hour: float
    local: bool = False
    """The machine the plan runs on (it can calibrate and measure)."""
    bf16: bool = True
    """Whether `train.precision: auto` trains in bf16 there (else fp32)."""


GPUS: dict[str, DeviceSpec] = {
    spec.name: spec
    for spec in (
        DeviceSpec("a100-80gb", "cuda", 80 * GIB, 312e12, GPU_EFFICIENCY, 2.0),
        DeviceSpec("a100-40gb", "cuda", 40 * GIB, 312e12, GPU_EFFICIENCY, 1.5),
        DeviceSpec("h100-80gb", "cuda", 80 * GIB, 989e12, GPU_EFFICIENCY, 3.0),
        DeviceSpec("h200-141gb", "cuda", 141 * GIB, 989e12, GPU_EFFICIENCY, 4.0),
        DeviceSpec("l4-24gb", "cuda", 24 * GIB, 121e12, GPU_EFFICIENCY, 0.8),
        DeviceSpec("a10g-24gb", "cuda", 24 * GIB, 125e12, GPU_EFFICIENCY, 1.0),
        DeviceSpec("t4-16gb", "cuda", 16 * GIB, 8.1e12, GPU_EFFICIENCY, 0.35, bf16=False),
        DeviceSpec("rtx4090-24gb", "cuda", 24 * GIB, 165e12, GPU_EFFICIENCY, 0.7),
    )
}
LOCAL = ("cpu", "cuda")


def device_names() -> list[str]:
    return [*LOCAL, *GPUS]


def lookup_device(name: str) -> DeviceSpec:
    """The machine called ``name``; an unknown name is one line with a did-you-mean."""
    key = name.strip().lower()
    if key == "cpu":
        return this_cpu()
    if key == "cuda":
        return this_gpu()
    if key in GPUS:
        return GPUS[key]
    hint = difflib.get_close_matches(key, device_names(), n=1, cutoff=0.5)
    fix = f" Did you mean {hint[0]!r}?" if hint else ""
    raise UnknownDeviceError(
        f"--device {name!r} is not a known device.{fix} Known: {', '.join(device_names())}."
    )


def this_cpu() -> DeviceSpec:
    """This machine's CPU: its RAM, and the bf16-or-fp32 matmul rate it measures now."""
    from tunesmith.models import resolve_precision
    from tunesmith.models.precision import probe_matmul

    precision = resolve_precision("auto", torch.device("cpu"))
    probe = probe_matmul()
    native = precision.compute == torch.bfloat16
    gflops = probe.bf16_gflops if native else probe.fp32_gflops
    return DeviceSpec("cpu", "cpu", _ram_bytes(), gflops * 1e9, CPU_EFFICIENCY, 0.0, local=True)


def this_gpu() -> DeviceSpec:
    """The visible CUDA device, matched to the table by memory for its peak and price."""
    if not torch.cuda.is_available():
        raise UnknownDeviceError(
            "--device cuda: no CUDA device is visible here. Plan for a named GPU instead "
            f"(one of {', '.join(GPUS)}) or for cpu."
        )
    properties = torch.cuda.get_device_properties(0)
    memory = int(properties.total_memory)
    nearest = min(GPUS.values(), key=lambda spec: abs(spec.memory_bytes - memory))
    return replace(
        nearest, name=f"cuda ({properties.name})", memory_bytes=memory, local=True,
        bf16=torch.cuda.is_bf16_supported(),
    )  # fmt: skip


def _ram_bytes() -> int:
    """Memory this process may use: the cgroup limit when one is set, else MemTotal."""
    limit = Path("/sys/fs/cgroup/memory.max")
    try:
        text = limit.read_text().strip()
        if text.isdigit():
            return int(text)
    except OSError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_bytes(text: str) -> int:
    """'8GB', '7.5GiB', '512MB', '1e9' as bytes (GB = 10^9, GiB = 2^30)."""
    units = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": GB, "TB": 1000**4,
             "KIB": 1024, "MIB": 1024**2, "GIB": GIB, "TIB": 1024**4}  # fmt: skip
    raw = text.strip().upper().replace(" ", "")
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in units or value <= 0:
        raise TunesmithError(
            f"--memory-limit {text!r}: expected a size such as 8GB, 7.5GiB or 512MB."
        )
    return int(value * units[unit])
