"""Activation, gradient and optimizer memory, and FLOPs, measured on a shallow copy.

The model is rebuilt from its config with one and then two decoder layers (random
weights, nothing loaded), the run's method and objective attached, and trained for two
optimizer steps on the widest forward piece of the real data, in the run's precision and
with its gradient-checkpointing setting. Every tensor those steps allocate is counted
(`LiveTensorBytes`) and every matmul's FLOPs (`CountFlops`: no module hooks, which
would keep checkpointing's recomputed tensors alive). Memory and FLOPs of a
decoder stack grow by the same amount per layer, so the two probes extrapolate exactly to
the full depth; what does not grow with depth (embeddings, the chunked logits of the loss,
their gradients) is in both and is kept once.

On CPU a forward shape met for the first time also leaves memory resident: oneDNN builds
and caches its bf16 matmul primitives per shape (a SmolLM2 layer and head under bf16
autocast: ~25 MB a new shape for the first ~35 shapes, then ~5 MB a shape once its
primitive cache of 1,024 entries evicts). The growth depends on how many shapes, not on
their size nor on the depth (one and two layers grew alike, one row and eight alike). So
after its steps the one-layer probe runs a pass at each of up to 16 other shapes the run
executes and records the growth after each: the curve, read at the run's number of
shapes, and past its end extrapolated at the slope of its second half (which cannot see
the cache fill: beyond ~35 shapes it over-predicts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PretrainedConfig

from tunesmith.config import RunConfig
from tunesmith.engine.loop import LoopSettings, build_optimizer
from tunesmith.methods import get_method
from tunesmith.models import Precision, enable_gradient_checkpointing
from tunesmith.models.autocast_paths import (
    store_frozen_linears_in,
    stores_frozen_linears_in_compute_dtype,
)
from tunesmith.objectives import Objective, attach_objective_parameters
from tunesmith.plan.flops import CountFlops
from tunesmith.plan.measure import resident_bytes
from tunesmith.plan.quantized import quantize_linear_layers
from tunesmith.plan.tracker import LiveTensorBytes
from tunesmith.plan.weights import attach_method

PASSES = 3
"""Forward/backward passes the probe runs: one step of one pass, then one of two (the
second pass of a window runs with the first's gradients held, as accumulation does)."""


@dataclass(frozen=True)
class ProbeResult:
    """What one training step of the full-depth model allocates beyond its weights."""

    peak_bytes: int
    """High-water mark of activations, logits, gradients, optimizer state and temporaries."""
    flops_per_pass: int
    """Forward + backward FLOPs of one pass over the probed piece."""
    piece_slots: int
    shape_curve: tuple[int, ...] = ()
    """Resident growth (CPU) after each of the probe's passes at a shape not met before."""

    @property
    def shape_probe_bytes(self) -> int:
        """What measuring the curve grew the process by (not the first shape's runtime)."""
        return max(0, self.shape_curve[-1]) if self.shape_curve else 0

    def shape_kernel_bytes(self, shapes: int) -> int:
        """What a run of ``shapes`` distinct forward shapes keeps resident beyond its first:
        the curve at that count, or past its end its last point plus the slope of its second
        half (the primitive cache is evicting by then, if it ever does)."""
        curve, new = self.shape_curve, shapes - 1
        if new <= 0 or not curve:
            return 0
        if new <= len(curve):
            return max(0, curve[new - 1])
        half = len(curve) // 2
        start = curve[half - 1] if half else 0
        slope = (curve[-1] - start) / (len(curve) - half)
        return max(0, round(curve[-1] + max(0.0, slope) * (new - len(curve))))


@dataclass(frozen=True)
class _Shallow:
    phase_peaks: tuple[int, int]
    """High-water marks of the forward/backward passes and of the optimizer step. Each
    grows linearly in depth, but at different rates (activations vs parameter-sized
    temporaries), so the phase that peaks at one layer need not peak at thirty: each is
    extrapolated on its own and the larger taken."""
    flops: int
    shape_curve: tuple[int, ...] = ()

    @property
    def peak_bytes(self) -> int:
        return max(self.phase_peaks)


def probe_step(
    run: RunConfig,
    model_config: PretrainedConfig,
    objective: Objective,
    piece: Any,
    *,
    precision: Precision,
    device: torch.device,
    slots: int,
    shape_samples: tuple[Any, ...] = (),
) -> ProbeResult:
    """Measure one and two layers, extrapolate to ``model_config.num_hidden_layers``;
    ``shape_samples`` are pieces of other shapes the run executes."""
    layers = int(model_config.num_hidden_layers)
    samples = shape_samples if device.type == "cpu" else ()
    one = _measure(run, _with_layers(model_config, 1), objective, piece, precision, device, samples)
    two = _measure(run, _with_layers(model_config, 2), objective, piece, precision, device)
    extra = layers - 1
    peak = max(
        first + extra * max(0, second - first)
        for first, second in zip(one.phase_peaks, two.phase_peaks, strict=True)
    )
    flops = one.flops + extra * max(0, two.flops - one.flops)
    return ProbeResult(int(peak), int(flops // PASSES), slots, one.shape_curve)


def _with_layers(model_config: PretrainedConfig, layers: int) -> PretrainedConfig:
    shallow = model_config.__class__.from_dict(model_config.to_dict())
    shallow.num_hidden_layers = layers
    layer_types = getattr(shallow, "layer_types", None)
    if isinstance(layer_types, list):
        shallow.layer_types = layer_types[:layers]
    return shallow


def _measure(
    run: RunConfig,
    model_config: PretrainedConfig,
    objective: Objective,
    piece: Any,
    precision: Precision,
    device: torch.device,
    shape_samples: tuple[Any, ...] = (),
) -> _Shallow:
    torch.manual_seed(run.train.seed)
    base = AutoModelForCausalLM.from_config(
        model_config, dtype=precision.weights, trust_remote_code=run.model.trust_remote_code
    ).to(device)
    method = get_method(run.method.name)
    quantization = method.base_load_options(run.method).get("quantization_config")
    if quantization is not None:  # real 4-bit layers: their float copies are measured
        model = method.attach(quantize_linear_layers(base, quantization, device), run.method)
    else:
        model = attach_method(base, run)
    attach_objective_parameters(objective, model)
    if stores_frozen_linears_in_compute_dtype(precision, device):
        store_frozen_linears_in(model, precision.compute)  # as training stores them
    if run.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    settings = LoopSettings(run.train, run.train.learning_rate or 1e-4)
    optimizer, _scheduler = build_optimizer(parameters, settings, total_steps=2)
    piece = piece.to(device)
    backward_peak = step_peak = 0
    with CountFlops() as flops, LiveTensorBytes() as live:
        for passes in (1, PASSES - 1):
            live.reset_peak()
            for _ in range(passes):
                with precision.autocast(device):
                    loss_sum, units = objective.loss_sum(model, piece)
                (loss_sum / max(1, units)).backward()
            backward_peak = max(backward_peak, live.peak)
            live.reset_peak()
            torch.nn.utils.clip_grad_norm_(parameters, run.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step_peak = max(step_peak, live.peak)
    curve: list[int] = []
    before = resident_bytes()
    for sample in shape_samples:  # no wider than the piece: the heap already holds them
        with precision.autocast(device):
            loss_sum, units = objective.loss_sum(model, sample.to(device))
        (loss_sum / max(1, units)).backward()
        optimizer.zero_grad(set_to_none=True)
        curve.append(resident_bytes() - before)
    return _Shallow((backward_peak, step_peak), flops.total, tuple(curve))
