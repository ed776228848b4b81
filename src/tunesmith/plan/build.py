"""Make a plan for a run config: compose weights, workload, probe, device and prices.

`plan_run` is what `api.plan` calls (it prepares the data as `train` would);
`plan_prepared` is what `api.train` calls with the data and tokenizer it already has,
so the banner's one-line plan costs only the probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tunesmith.config import RunConfig
from tunesmith.engine.batches import BatchSettings
from tunesmith.methods import get_method
from tunesmith.models import Precision, resolve_precision
from tunesmith.models.autocast_paths import stores_frozen_linears_in_compute_dtype
from tunesmith.models.loading import resolve_model_path
from tunesmith.objectives import Objective
from tunesmith.plan.devices import DeviceSpec, lookup_device
from tunesmith.plan.estimate import (
    DEFAULT_API_PRICE_PER_MTOK,
    Plan,
    Suggestion,
    cost_plan,
    memory_plan,
    time_plan,
)
from tunesmith.plan.measure import resident_bytes
from tunesmith.plan.probe import ProbeResult, probe_step
from tunesmith.plan.weights import load_model_config, parameter_memory
from tunesmith.plan.workload import Workload, describe_workload

BATCH_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class PlanRequest:
    """What the caller asks of a plan besides the run config."""

    device: str = "auto"
    """'auto' (this machine: CUDA when visible, else CPU), 'cpu', 'cuda' or a table name."""
    memory_limit: int | None = None
    """Bytes the run must fit in; default: the device's memory."""
    calibrate_steps: int = 0
    price_per_hour: float | None = None
    api_price_per_mtok: float = DEFAULT_API_PRICE_PER_MTOK
    explore: bool = True
    """Also find the largest batch that fits and, when it does not fit, what would."""


@dataclass
class _Context:
    run: RunConfig
    examples: list[Any]
    objective: Objective
    pad_token_id: int
    device: DeviceSpec
    precision: Precision
    probe_device: torch.device
    process_bytes: int
    runtime_bytes: int = 0
    """What this process's first training step allocates besides tensors (autograd engine,
    oneDNN kernels, thread pools): measured as the probe's growth of the resident set."""


def resolve_device(name: str) -> DeviceSpec:
    if name == "auto":
        return lookup_device("cuda" if torch.cuda.is_available() else "cpu")
    return lookup_device(name)


def plan_precision(run: RunConfig, device: DeviceSpec) -> Precision:
    """The precision the run would train in on ``device`` (named GPUs by their table row)."""
    if device.kind == "cpu" or device.local:
        return resolve_precision(run.train.precision, torch.device(device.kind))
    requested = run.train.precision
    if requested == "auto":
        requested = "bf16" if device.bf16 else "fp32"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[requested]
    return Precision(dtype, dtype, f"{requested} on {device.name}")


def plan_prepared(
    run: RunConfig,
    examples: list[Any],
    objective: Objective,
    pad_token_id: int,
    request: PlanRequest,
    *,
    process_bytes: int | None = None,
) -> Plan:
    """The plan of ``run`` over its tokenized training ``examples``."""
    device = resolve_device(request.device)
    precision = plan_precision(run, device)
    probe_device = (
        torch.device("cuda") if device.kind == "cuda" and device.local else torch.device("cpu")
    )
    if process_bytes is None:
        process_bytes = resident_bytes()
    context = _Context(
        run, examples, objective, pad_token_id, device, precision, probe_device, process_bytes
    )
    workload = _workload(context, run)
    model_config = load_model_config(
        str(resolve_model_path(run.model.name, run.model.cache_dir)),
        trust_remote_code=run.model.trust_remote_code,
    )
    frozen_linears = stores_frozen_linears_in_compute_dtype(precision, torch.device(device.kind))
    parameters = parameter_memory(
        run, model_config, objective, weights_dtype=precision.weights,
        frozen_linears_dtype=precision.compute if frozen_linears else None,
    )  # fmt: skip
    before_probe = resident_bytes()
    probe = _probe(context, run, model_config, workload)
    context.runtime_bytes = max(0, resident_bytes() - before_probe - probe.shape_probe_bytes)
    memory = memory_plan(
        parameters, probe, device, context.process_bytes, context.runtime_bytes,
        shapes=workload.shapes, compute_dtype=precision.compute,
    )  # fmt: skip
    timing = time_plan(probe, workload, device)
    price = device.price_per_hour if request.price_per_hour is None else request.price_per_hour
    trained_tokens = round(workload.real_tokens_per_epoch * workload.epochs)
    plan = Plan(
        model=str(run.model.name),
        method=run.method.name,
        device=device.name,
        precision=_precision_name(precision),
        gradient_checkpointing=run.train.gradient_checkpointing,
        parameters=parameters,
        workload=workload,
        memory=memory,
        time=timing,
        cost=cost_plan(timing, trained_tokens, price, request.api_price_per_mtok),
        limit_bytes=request.memory_limit or device.memory_bytes,
        limit_source="--memory-limit" if request.memory_limit else f"{device.name} memory",
        probe=probe,
    )
    if request.explore:
        _explore(context, plan, model_config, probe)
    return plan


def with_calibration(
    plan: Plan, tokens_per_second: float, steps: int, request: PlanRequest
) -> Plan:
    """``plan`` with its time and cost from a calibration run instead of the device table."""
    device = resolve_device(request.device)
    timing = time_plan(
        plan.probe, plan.workload, device,
        calibrated_tokens_per_second=tokens_per_second, calibration_steps=steps,
    )  # fmt: skip
    price = device.price_per_hour if request.price_per_hour is None else request.price_per_hour
    plan.time = timing
    plan.cost = cost_plan(timing, plan.trained_tokens, price, request.api_price_per_mtok)
    return plan


def _precision_name(precision: Precision) -> str:
    if precision.compute == precision.weights:
        return precision.name
    weights = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
    return f"{precision.name} autocast, weights {weights[precision.weights]}"


def _workload(context: _Context, run: RunConfig) -> Workload:
    method = get_method(run.method.name)
    batches = BatchSettings.of(
        run.train, pad_token_id=context.pad_token_id, pack=run.train.packing and method.packs,
        row_length=run.data.max_length, device=torch.device("cpu"),
    )  # fmt: skip
    return describe_workload(context.examples, context.objective, batches, run.train)


def _probe(context: _Context, run: RunConfig, model_config: Any, workload: Workload) -> ProbeResult:
    with torch.random.fork_rng(devices=[]):
        return probe_step(
            run, model_config, context.objective, workload.largest_piece,
            precision=context.precision, device=context.probe_device,
            slots=workload.largest_piece_slots, shape_samples=workload.shape_samples,
        )  # fmt: skip


def _explore(context: _Context, plan: Plan, model_config: Any, probe: ProbeResult) -> None:
    """The largest batch that fits, and (when the run does not fit) what would."""
    run = context.run
    limit = plan.limit_bytes

    def total_for(changed: RunConfig, parameters=plan.parameters, probed=probe) -> int:
        workload = _workload(context, changed)
        scale = workload.largest_piece_slots / max(1, probed.piece_slots)
        return memory_plan(
            parameters,
            probed,
            context.device,
            context.process_bytes,
            context.runtime_bytes,
            activation_scale=scale,
            shapes=workload.shapes,
            compute_dtype=context.precision.compute,
        ).total_bytes

    candidates = [b for b in BATCH_CANDIDATES if b <= max(1, len(context.examples))]
    fitting = [b for b in candidates if total_for(_with_train(run, batch_size=b)) <= limit]
    plan.largest_batch = max(fitting) if fitting else None
    plan.largest_batch_capped = bool(fitting) and max(fitting) == candidates[-1]
    if plan.fits:
        return
    suggestions: list[Suggestion] = []
    if not run.train.gradient_checkpointing:
        changed = _with_train(run, gradient_checkpointing=True)
        probed = _probe(context, changed, model_config, plan.workload)
        total = total_for(changed, probed=probed)
        suggestions.append(
            Suggestion("--set train.gradient_checkpointing=true", total, total <= limit)
        )
    tokens = run.train.max_tokens_per_forward
    while tokens > 64:
        tokens = max(64, tokens // 2)
        total = total_for(_with_train(run, max_tokens_per_forward=tokens))
        if total <= limit or tokens == 64:
            suggestions.append(
                Suggestion(f"--set train.max_tokens_per_forward={tokens}", total, total <= limit)
            )
            break
    if run.method.name in ("lora", "dora"):
        changed = run.model_copy(deep=True)
        changed.method = get_method("qlora").settings(
            **{**run.method.model_dump(), "name": "qlora"}
        )
        parameters = parameter_memory(
            changed, model_config, context.objective, weights_dtype=context.precision.weights
        )
        total = total_for(changed, parameters=parameters)
        suggestions.append(Suggestion("--set method.name=qlora", total, total <= limit))
    plan.suggestions = suggestions


def _with_train(run: RunConfig, **changes: object) -> RunConfig:
    changed = run.model_copy(deep=True)
    changed.train = changed.train.model_copy(update=changes)
    return changed
