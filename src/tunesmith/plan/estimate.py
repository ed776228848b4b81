"""The plan itself: memory by component, tokens, FLOPs, time and cost, and a verdict.

Each figure comes from one place: parameter bytes from the meta-device model
(`weights`), what a step allocates from the shallow probe (`probe`), token counts from
the real batches (`workload`), the machine from `devices`. This module only adds them up
and compares the sum with the memory there is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from tunesmith.plan.devices import (
    CPU_HEAP_RETENTION,
    CUDA_CONTEXT_BYTES,
    DeviceSpec,
)
from tunesmith.plan.probe import ProbeResult
from tunesmith.plan.weights import ParameterMemory
from tunesmith.plan.workload import Workload

ADAM_STATES = 2
"""AdamW keeps two moments per trainable parameter, in the parameter's dtype."""

QUANTIZED_SOURCE = "4-bit weights' source pages, still mapped (CPU)"
DEQUANTIZED_HEAP = "heap the 4-bit weights' float copies leave (CPU)"
SHAPE_KERNELS = "kernels kept for each further batch shape (CPU)"

DEFAULT_API_PRICE_PER_MTOK = 25.0
"""$ per million trained tokens of a hosted fine-tuning API (GPT-4o's list price)."""


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted peak bytes by component; ``checked_bytes`` is what a run measures
    (peak RSS on CPU, max_memory_allocated on CUDA), ``total_bytes`` what must fit."""

    components: dict[str, int]
    checked_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class TimePlan:
    flops_per_token: float
    total_flops: float
    tokens_per_second: float
    seconds: float
    source: str
    """'calibrated on N steps' or 'device peak x efficiency'."""
    seconds_per_step: float | None = None


@dataclass(frozen=True)
class CostPlan:
    price_per_hour: float
    machine_dollars: float
    api_price_per_mtok: float
    api_dollars: float


@dataclass(frozen=True)
class Suggestion:
    change: str
    total_bytes: int
    fits: bool


@dataclass
class Plan:
    """Everything `tunesmith plan` prints (and `--json` writes)."""

    model: str
    method: str
    device: str
    precision: str
    gradient_checkpointing: bool
    parameters: ParameterMemory
    workload: Workload
    memory: MemoryPlan
    time: TimePlan
    cost: CostPlan
    limit_bytes: int
    limit_source: str
    largest_batch: int | None = None
    largest_batch_capped: bool = False
    suggestions: list[Suggestion] = field(default_factory=list)
    probe: ProbeResult | None = None
    """The measurement the memory and FLOPs come from (kept to re-time the plan)."""

    @property
    def fits(self) -> bool:
        return self.memory.total_bytes <= self.limit_bytes

    @property
    def trained_tokens(self) -> int:
        """Non-padding tokens over the whole run (how per-token APIs bill training)."""
        return round(self.workload.real_tokens_per_epoch * self.workload.epochs)

    def to_dict(self) -> dict[str, object]:
        pieces = ("largest_piece", "shape_samples")
        workload = {k: v for k, v in asdict(self.workload).items() if k not in pieces}
        return {
            "model": self.model,
            "method": self.method,
            "device": self.device,
            "precision": self.precision,
            "gradient_checkpointing": self.gradient_checkpointing,
            "total_predicted_peak_bytes": self.memory.total_bytes,
            "checked_peak_bytes": self.memory.checked_bytes,
            "memory_components": self.memory.components,
            "memory_limit_bytes": self.limit_bytes,
            "memory_limit_source": self.limit_source,
            "fits": self.fits,
            "largest_batch_that_fits": self.largest_batch,
            "largest_batch_capped": self.largest_batch_capped,
            "suggestions": [asdict(s) for s in self.suggestions],
            "parameters": asdict(self.parameters),
            "workload": workload,
            "trained_tokens": self.trained_tokens,
            "time": asdict(self.time),
            "cost": asdict(self.cost),
        }


def memory_plan(
    parameters: ParameterMemory,
    probe: ProbeResult,
    device: DeviceSpec,
    process_bytes: int,
    runtime_bytes: int,
    *,
    activation_scale: float = 1.0,
    shapes: int = 1,
    compute_dtype: torch.dtype = torch.float32,
) -> MemoryPlan:
    """Sum the components; ``activation_scale`` stretches the probed working set to a
    wider piece (another batch size or max_tokens_per_forward). ``runtime_bytes`` is the
    CPU process's non-tensor growth in its first step, as the probe measured it, and the
    run's other forward shapes (``shapes`` in all) keep what the probe's curve says."""
    optimizer = parameters.trainable_bytes * (1 + ADAM_STATES)  # gradients + two moments
    working = max(0, probe.peak_bytes - optimizer)
    components = {
        f"frozen weights ({dtype})": size
        for dtype, size in parameters.frozen_bytes_by_dtype.items()
    }
    components["trainable weights"] = parameters.trainable_bytes
    components["gradients + AdamW moments"] = optimizer
    components["activations, logits, temporaries"] = round(working * activation_scale)
    tensors = sum(components.values())
    if device.kind == "cuda":
        components["CUDA context (estimate)"] = _cuda_context()
        return MemoryPlan(components, tensors, tensors + components["CUDA context (estimate)"])
    components["heap the allocator keeps (CPU)"] = round(
        working * activation_scale * (CPU_HEAP_RETENTION - 1)
    )
    components["process (interpreter, libraries, data)"] = process_bytes
    components["checkpoint written in memory (CPU)"] = _checkpoint_excess(parameters)
    if parameters.quantized_params:
        components[QUANTIZED_SOURCE] = _quantized_source_pages(parameters)
        components[DEQUANTIZED_HEAP] = _dequantized_heap(parameters, compute_dtype)
    components["training runtime (autograd, kernels, threads)"] = runtime_bytes
    components[SHAPE_KERNELS] = probe.shape_kernel_bytes(shapes)
    total = sum(components.values())
    return MemoryPlan(components, total, total)


def _checkpoint_excess(parameters: ParameterMemory) -> int:
    """What writing a checkpoint adds to the training peak on CPU.

    `engine.checkpoint` serializes each file into memory before writing it (the trainable
    weights as safetensors bytes, the optimizer state through ``torch.save`` into a
    buffer). The largest file is the AdamW state, two moments per trainable parameter.
    The step's freed memory stays in the heap (see ``CPU_HEAP_RETENTION``), and a buffer
    that large is a fresh mapping, so RSS grows by the whole file: negligible for adapters,
    two copies of the weights for full fine-tuning (SmolLM2 full 4 x 128: RSS 3.49 GB over
    the steps, 4.81 GB once the final checkpoint was written)."""
    return max(parameters.trainable_bytes, ADAM_STATES * parameters.trainable_bytes)


def _quantized_source_pages(parameters: ParameterMemory) -> int:
    """The checkpoint pages the 4-bit weights were read from, still resident (CPU).

    transformers maps the safetensors file and bitsandbytes reads every linear weight
    from it to quantize it; the unquantized tensors (the embedding tied to the head) go
    on pointing into that mapping, so the file stays mapped and every page read stays in
    the resident set: the quantized weights once more, in the file's dtype (checked
    against /proc/self/smaps in `tests/plan/test_parts.py`). Not on CUDA: host memory."""
    return parameters.quantized_params * parameters.quantized_source_element_size


def _dequantized_heap(parameters: ParameterMemory, compute_dtype: torch.dtype) -> int:
    """The heap the float copies of the 4-bit weights leave on CPU.

    Loading quantizes each linear weight from a float copy and frees it between the small
    4-bit tensors it keeps (after loading SmolLM2 for QLoRA, glibc's heap held 359 MB free,
    by mallinfo2, beside 425 MB of fp32 linear weights); every step then dequantizes each
    weight to the compute dtype, in forward and again in backward, into weight-sized holes
    the activations mostly do not fit. About one float copy of the quantized weights stays
    in the heap. The probe's live-tensor count cannot see it (each copy is freed before the
    next is made), and the heap factor on the working set does not scale with it: QLoRA's
    probed working set is smaller than LoRA's, its peak RSS was not (docs/plan.md).

    Where the steps compute in a narrower dtype than the copies (CPU bf16 autocast over
    fp32 copies) they fill that heap instead: on an AVX512-BF16 machine loading left 547 MB
    free, and QLoRA's steps grew RSS by 740 MB against LoRA's 1,216 MB for the same probed
    working set (864 and 881 MB), so the heap is already counted by the steps'."""
    if compute_dtype.itemsize < parameters.dequantized_element_size:
        return 0
    return parameters.quantized_params * parameters.dequantized_element_size


def _cuda_context() -> int:
    return CUDA_CONTEXT_BYTES


def time_plan(
    probe: ProbeResult,
    workload: Workload,
    device: DeviceSpec,
    *,
    calibrated_tokens_per_second: float | None = None,
    calibration_steps: int = 0,
) -> TimePlan:
    """FLOPs from the probe; time from a calibration when there is one, else from the
    device's peak times its efficiency."""
    flops_per_slot = probe.flops_per_pass / max(1, probe.piece_slots)
    total_flops = flops_per_slot * workload.slots_per_epoch * workload.epochs
    real_tokens = workload.real_tokens_per_epoch * workload.epochs
    flops_per_token = total_flops / max(1.0, real_tokens)
    if calibrated_tokens_per_second:
        rate, source = calibrated_tokens_per_second, f"calibrated on {calibration_steps} steps"
    else:
        rate = device.peak_flops * device.efficiency / max(1.0, flops_per_token)
        source = f"{device.name} peak {device.peak_flops / 1e12:.2f} TFLOP/s x {device.efficiency}"
    seconds = real_tokens / max(rate, 1e-9)
    per_step = seconds / max(1, workload.steps)
    return TimePlan(flops_per_token, total_flops, rate, seconds, source, per_step)


def cost_plan(
    time: TimePlan, trained_tokens: int, price_per_hour: float, api_price_per_mtok: float
) -> CostPlan:
    return CostPlan(
        price_per_hour,
        price_per_hour * time.seconds / 3600,
        api_price_per_mtok,
        api_price_per_mtok * trained_tokens / 1e6,
    )
