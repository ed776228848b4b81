"""tunesmith as Python functions: the one front door under every entry point.

The CLI, the HTTP server and the jobs worker all build a `RunConfig` and call these, so
a run started from any of them is the same run. Each function composes parts from the
stages (`data`, `models`, `methods`, `objectives`, `engine`, `evaluate`) and returns a
value; printing is the caller's business, except the progress bar of `train`.

    from tunesmith import api
    from tunesmith.config import load_config

    config = load_config(overrides=["data.train=[my.jsonl]"])
    summary = api.train(config)
    result = api.evaluate(summary.run_dir)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich.console import Console
from rich.markup import escape

from tunesmith.config import RunConfig
from tunesmith.data.load import PreparedRecords, prepare_configured_records
from tunesmith.engine import checkpoint as ckpt
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.checkpoint_writer import CheckpointWriter
from tunesmith.engine.loop import (
    Checkpointer,
    LoopOutput,
    LoopResult,
    LoopSettings,
    evaluate_loss,
    planned_steps,
    run_loop,
)
from tunesmith.engine.parallel import Parallel, Processes, build_parallel, strategy_from_launcher
from tunesmith.engine.progress import TrainingProgress
from tunesmith.engine.resume import Resumer, resume_contract
from tunesmith.engine.signals import StopRequest
from tunesmith.engine.threads import configure_threads
from tunesmith.engine.trackers import Trackers
from tunesmith.methods import count_parameters
from tunesmith.models import (
    Precision,
    enable_gradient_checkpointing,
    load_base_model,
    pick_device,
    resolve_precision,
)
from tunesmith.models.autocast_paths import (
    store_frozen_linears_in,
    stores_frozen_linears_in_compute_dtype,
)
from tunesmith.plan.measure import peak_memory_bytes, resident_bytes
from tunesmith.runs import RunPaths
from tunesmith.training import (
    TrainableModel,
    TrainingData,
    TrainSummary,
    build_trainable_model,
    logged_val_loss_before_training,
    prepare_training_data,
    write_final,
)

if TYPE_CHECKING:
    from datetime import datetime

    from tunesmith.evaluate.run import EvalResult
    from tunesmith.export.result import ExportResult
    from tunesmith.monitor.retrain import RetrainResult
    from tunesmith.monitor.run import MonitorResult
    from tunesmith.plan import Plan as PlanOfRun
    from tunesmith.plan import PlanRequest
    from tunesmith.plan.sweep import SweepResult

__all__ = [
    "evaluate",
    "export",
    "merge",
    "monitor",
    "plan",
    "prepare_data",
    "retrain",
    "serve",
    "sweep",
    "train",
]


def train(
    config: RunConfig,
    *,
    resume: str | None = None,
    allow_mismatch: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> TrainSummary:
    """Fine-tune as `config` says and write the run directory; returns what was produced.

    ``resume`` is 'auto' (the newest complete checkpoint of the run) or a checkpoint path;
    ``allow_mismatch`` continues a checkpoint whose settings differ (each one listed).
    """
    console = console or Console()
    processes = Processes.join()
    threads = configure_threads(config.train.threads, processes.local_world_size)
    paths = RunPaths(config.run_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    # Before any model or data is loaded: a wrong --resume path fails in a second.
    resume_from = ckpt.resolve_resume(paths.root, resume) if resume else None
    device = pick_device(config.train.device)
    precision = resolve_precision(config.train.precision, device)
    # The run's config records the precision in effect, not the request ('auto').
    config = config.model_copy(deep=True)
    config.train.precision = precision.name
    if processes.rank == 0:
        paths.config.write_text(config.to_yaml(), encoding="utf-8")
    before_model = resident_bytes()
    trainable = build_trainable_model(config, device=device, dtype=precision.weights)
    if stores_frozen_linears_in_compute_dtype(precision, device, processes.world_size):
        store_frozen_linears_in(trainable.model, precision.compute)
    model_growth = resident_bytes() - before_model
    data = prepare_training_data(
        config, trainable.objective, trainable.tokenizer, paths, write_report=processes.rank == 0
    )
    # The plan counts what loading the model leaves itself (its tensors, the pages a 4-bit
    # load read); RSS less the model's tensors did not: mapped safetensors weights are not
    # resident until first used, so it fell 0.5 GB short for SmolLM2 LoRA in fp32.
    process_bytes = resident_bytes() - model_growth
    plan = _plan(config, trainable, data, processes, device, precision)
    run_plan = None
    if processes.rank == 0:
        run_plan, plan_line = _run_plan(config, trainable, data, device, process_bytes)
        console.print(_banner(config, trainable, data, plan, processes, threads))
        console.print(plan_line, highlight=False)
        if precision.warning:
            console.print(f"[yellow]warning:[/yellow] {escape(precision.warning)}", highlight=False)
        for warning in data.report.split_warnings():
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
        if resume and resume_from is None:
            console.print(f"no complete checkpoint in {paths.checkpoints}: starting fresh")
    if resume_from is None:
        val_before = _start_fresh(paths, processes.rank, trainable, data, plan)
    else:
        val_before = logged_val_loss_before_training(paths.metrics)
    resumer = Resumer(
        resume_from, plan.contract, plan.parallel, processes.rank, paths.checkpoints,
        allow_mismatch=allow_mismatch, say=console.print,
    )  # fmt: skip
    result = _run_loop(config, trainable, data, plan, paths, processes, resumer, show_progress)
    val_after = None
    if not result.stopped_by_signal:
        if result.best_trainable_state is not None:
            plan.parallel.load_trainable_state(result.best_trainable_state)
        if data.validation:
            val_after = _validation_loss(trainable, data, plan)
        write_final(trainable, plan.parallel, processes, paths.final)
    summary = _summary(
        paths, processes.rank, result, resume_from is not None, val_before, val_after,
        count_parameters(trainable.model),
    )  # fmt: skip
    _record_memory(summary, run_plan, device)
    if processes.rank == 0:
        paths.summary.write_text(summary.to_json(), encoding="utf-8")
    processes.barrier()
    return summary


@dataclass
class _Plan:
    """What the run derives from its config, its data and its processes before training."""

    parallel: Parallel
    learning_rate: float
    total_steps: int
    device: torch.device
    precision: Precision
    contract: dict[str, object]
    batches: BatchSettings


def _plan(
    config: RunConfig,
    trainable: TrainableModel,
    data: TrainingData,
    processes: Processes,
    device: torch.device,
    precision: Precision,
) -> _Plan:
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(trainable.model)
    parallel = build_parallel(
        strategy_from_launcher(config.train.strategy),
        trainable.model,
        trainable.objective,
        processes,
        method=trainable.method,
    )
    learning_rate = config.train.learning_rate or trainable.method.default_learning_rate
    total_steps = planned_steps(config.train, len(data.train), processes.world_size)
    contract = resume_contract(
        data_fingerprint=data.fingerprint,
        micro_batch_size=config.train.batch_size,
        gradient_accumulation=config.train.gradient_accumulation,
        world_size=processes.world_size,
        strategy=parallel.name,
        seed=config.train.seed,
        total_steps=total_steps,
        learning_rate=learning_rate,
        lr_scheduler=config.train.lr_scheduler,
        warmup_ratio=config.train.warmup_ratio,
        model=str(config.model.name),
        method=config.method.model_dump(mode="json"),
        objective=config.objective.model_dump(mode="json"),
    )
    batches = BatchSettings.of(
        config.train,
        pad_token_id=trainable.tokenizer.pad_token_id,
        pack=config.train.packing and trainable.method.packs,
        row_length=config.data.max_length,
        device=device,
    )
    return _Plan(parallel, learning_rate, total_steps, device, precision, contract, batches)


def _validation_loss(trainable: TrainableModel, data: TrainingData, plan: _Plan) -> float:
    return evaluate_loss(
        trainable.model,
        trainable.objective,
        data.validation,
        batches=plan.batches,
        parallel=plan.parallel,
        autocast_dtype=_autocast_dtype(plan),
    )


def _autocast_dtype(plan: _Plan) -> torch.dtype | None:
    """What forward passes autocast to: None when they compute in fp32."""
    compute = plan.precision.compute
    return None if compute == torch.float32 else compute


def _start_fresh(
    paths: RunPaths, rank: int, trainable: TrainableModel, data: TrainingData, plan: _Plan
) -> float | None:
    """Empty logs, and the validation loss before any training (logged as step 0)."""
    if rank == 0:
        paths.metrics.write_text("", encoding="utf-8")
    paths.root.joinpath(f"samples.rank{rank}.jsonl").write_text("", encoding="utf-8")
    if not data.validation:
        return None
    loss = _validation_loss(trainable, data, plan)
    if rank == 0:
        with paths.metrics.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps({"step": 0, "val_loss": loss}) + "\n")
    return loss


def _run_loop(
    config: RunConfig,
    trainable: TrainableModel,
    data: TrainingData,
    plan: _Plan,
    paths: RunPaths,
    processes: Processes,
    resumer: Resumer,
    show_progress: bool,
) -> LoopResult:
    writer = CheckpointWriter(
        paths.root, plan.parallel, processes, plan.contract, config.model_dump(mode="json"),
        keep=config.train.keep_checkpoints,
    )  # fmt: skip
    rank = processes.rank
    trackers = Trackers(
        config.train.report_to if rank == 0 else [], paths.root, config.model_dump(mode="json")
    )
    with (
        StopRequest() as stop,
        TrainingProgress(plan.total_steps, enabled=show_progress and rank == 0) as progress,
    ):
        result = run_loop(
            trainable.model,
            trainable.objective,
            data.train,
            data.validation,
            settings=LoopSettings(
                config.train,
                plan.learning_rate,
                autocast_dtype=_autocast_dtype(plan),
            ),
            batches=plan.batches,
            output=LoopOutput(paths.metrics, progress, on_metrics=trackers.log),
            parallel=plan.parallel,
            checkpointer=Checkpointer(restore=resumer, save=writer),
            stop_requested=lambda: processes.any(stop.requested),
        )
    trackers.close()
    return result


def _run_plan(
    config: RunConfig,
    trainable: TrainableModel,
    data: TrainingData,
    device: torch.device,
    process_bytes: int,
) -> tuple[PlanOfRun | None, str]:
    """The run's plan and its one line; a plan that cannot be made is said, never fatal:
    it advises, and the run it describes is already set up."""
    from tunesmith.plan import PlanRequest, plan_prepared
    from tunesmith.plan.render import one_line

    try:
        made = plan_prepared(
            config, data.train, trainable.objective, trainable.tokenizer.pad_token_id,
            PlanRequest(device=device.type, explore=False), process_bytes=process_bytes,
        )  # fmt: skip
    except Exception as error:
        return None, f"plan: unavailable ({type(error).__name__}: {error})"
    return made, one_line(made)


def _record_memory(summary: TrainSummary, run_plan: PlanOfRun | None, device: torch.device) -> None:
    """Predicted beside measured peak memory and throughput: the plan checks itself."""
    summary.measured_peak_bytes, summary.peak_memory_source = peak_memory_bytes(device)
    if run_plan is not None:
        summary.predicted_peak_bytes = run_plan.memory.checked_bytes
        summary.predicted_tokens_per_second = round(run_plan.time.tokens_per_second, 1)


def _banner(
    config: RunConfig,
    trainable: TrainableModel,
    data: TrainingData,
    plan: _Plan,
    processes: Processes,
    threads: int,
) -> str:
    trainable_count, total_count = count_parameters(trainable.model)
    world = processes.world_size
    effective = config.train.batch_size * config.train.gradient_accumulation * world
    return (
        f"trainable: {trainable_count:,} of {total_count:,} "
        f"({100 * trainable_count / total_count:.2f}%)  method {trainable.method.name}  "
        f"objective {trainable.objective.name}  lr {plan.learning_rate:g}\n"
        f"examples: {len(data.train)} train, {len(data.validation)} validation  "
        f"effective batch size {effective} ({config.train.batch_size} x "
        f"{config.train.gradient_accumulation} accumulation x {world} process(es)"
        f"{f', {plan.parallel.name}' if world > 1 else ''})  "
        f"device {plan.device.type} ({threads} CPU threads)\n"
        f"precision: {_precision_line(plan.precision)}"
    )


def _precision_line(precision: Precision) -> str:
    weights = "fp32" if precision.weights == torch.float32 else str(precision.weights)
    if precision.compute == precision.weights:
        return f"{precision.name} ({precision.reason})"
    return f"{precision.name} autocast, weights and optimizer {weights} ({precision.reason})"


def _summary(
    paths: RunPaths,
    rank: int,
    result: LoopResult,
    resumed: bool,
    val_before: float | None,
    val_after: float | None,
    counts: tuple[int, int],
) -> TrainSummary:
    return TrainSummary(
        run_dir=paths.root,
        rank=rank,
        final_dir=paths.final,
        steps=result.state.step,
        resumed_at_step=result.state.step - result.steps_run if resumed else None,
        seconds=round(result.seconds, 2),
        real_tokens_per_second=round(result.real_tokens_per_second, 1),
        val_loss_before=val_before,
        val_loss_after=val_after,
        best_step=result.state.best_step,
        trainable=counts[0],
        total=counts[1],
        stopped_early=result.stopped_early,
        stopped_by_signal=result.stopped_by_signal,
        warnings=result.warnings,
    )


def evaluate(
    run_dir: Path,
    *,
    test_files: Sequence[Path] | None = None,
    metrics: Sequence[str] | None = None,
    max_items: int | None = None,
    trust_remote_code: bool = False,
    on_notice: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score the run against its base model on held-out data; write `eval/` in the run.

    Conversations: base zero-shot and few-shot vs fine-tuned on the task's metrics;
    preference pairs: preference accuracy and margin; raw text: perplexity. Each with
    paired-bootstrap intervals and a one-line verdict. ``trust_remote_code`` is this
    caller's decision, never the run directory's; ``on_notice`` receives what the user
    should be told (a stored setting that was ignored).
    """
    from tunesmith.evaluate.stage import evaluate_run

    return evaluate_run(
        run_dir,
        test_files=test_files,
        metrics=metrics,
        max_items=max_items,
        trust_remote_code=trust_remote_code,
        on_notice=on_notice,
    )


def merge(
    run_dir: Path,
    out: Path | None = None,
    *,
    trust_remote_code: bool = False,
    on_notice: Callable[[str], None] | None = None,
) -> Path:
    """Fold the trained adapter into the base weights; returns the plain model's dir."""
    from tunesmith.methods import get_method
    from tunesmith.runs import load_trained

    trained = load_trained(run_dir, trust_remote_code=trust_remote_code)
    for notice in trained.notices:
        (on_notice or console_warning)(notice)
    method = get_method(trained.config.method.name)
    target = out or RunPaths(run_dir).root / "merged"
    merged = method.merge(trained.model)
    merged.save_pretrained(target, safe_serialization=True)
    trained.tokenizer.save_pretrained(target)
    return target


def export(
    run_dir: Path,
    target: str,
    *,
    quant: str | Sequence[str] | None = None,
    verify_items: int = 20,
    trust_remote_code: bool = False,
    on_notice: Callable[[str], None] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write the run for llama.cpp/Ollama/HF/vLLM under `RUN_DIR/export/<target>/` and prove
    the files in their runtime on the run's held-out prompts (``verify_items=0`` skips)."""
    from tunesmith.export import export_run

    return export_run(
        run_dir,
        target,
        quant=quant,
        verify_items=verify_items,
        trust_remote_code=trust_remote_code,
        on_notice=on_notice or console_warning,
        on_progress=on_progress,
    )


def console_warning(message: str) -> None:
    Console(stderr=True).print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


def plan(config: RunConfig, request: PlanRequest | None = None) -> PlanOfRun:
    """Memory, time and cost of training ``config``, before training it (docs/plan.md).

    The data is read, validated and tokenized exactly as `train` does; the model is built
    on the meta device (no weights) and probed on a shallow copy. ``request.calibrate_steps``
    times that many real steps on this machine first.
    """
    from tunesmith.cli_data import load_tokenizer
    from tunesmith.objectives import build_objective
    from tunesmith.plan import PlanRequest, plan_prepared
    from tunesmith.plan.build import with_calibration
    from tunesmith.plan.calibrate import calibrate

    request = request or PlanRequest()
    tokenizer = load_tokenizer(config)
    objective = build_objective(
        config.objective,
        model_loader=lambda name: load_base_model(name, cache_dir=config.model.cache_dir).model,
        base_model=config.model.name,
    )
    data = prepare_training_data(
        config, objective, tokenizer, RunPaths(config.run_dir), write_report=False
    )
    process_bytes = resident_bytes()  # imports, tokenizer and data: what a run holds too
    made = plan_prepared(
        config, data.train, objective, tokenizer.pad_token_id, request,
        process_bytes=process_bytes,
    )  # fmt: skip
    if request.calibrate_steps:  # after the probe: a run in this process must not affect it
        measured = calibrate(config, request.calibrate_steps)
        made = with_calibration(made, measured.tokens_per_second, measured.steps, request)
    return made


def sweep(
    config_path: Path,
    space_path: Path,
    *,
    overrides: Sequence[str] = (),
    trials: int = 10,
    budget_seconds: float | None = None,
    directory: Path | None = None,
    say: Callable[[str], None] = print,
) -> SweepResult:
    """Search ``space_path`` around the run of ``config_path`` with Optuna (docs/plan.md).

    A budget below one trial's plan is refused before anything trains; the study is kept
    in ``directory``/study.db (default: the run directory + ``-sweep``) and continues there.
    """
    from tunesmith.config import load_config
    from tunesmith.plan import PlanRequest
    from tunesmith.plan.space import load_space
    from tunesmith.plan.sweep import check_budget, run_sweep

    space = load_space(space_path)
    base = load_config(config_path, list(overrides))
    if budget_seconds is not None:
        one_trial = plan(base, PlanRequest(explore=False)).time.seconds
        check_budget(budget_seconds, one_trial, f"{budget_seconds:.0f}s")
    target = directory or base.run_dir.with_name(base.run_dir.name + "-sweep")
    return run_sweep(
        config_path, overrides, base, space, trials=trials, budget_seconds=budget_seconds,
        directory=target, say=say,
    )  # fmt: skip


def prepare_data(config: RunConfig, *, test: Sequence[Path] | None = None) -> PreparedRecords:
    """Read, validate and split the run's data exactly as `train` will (no tokenizing)."""
    return prepare_configured_records(config.data, test=test)


def serve(
    run_dirs: Sequence[str | Path], *, host: str = "127.0.0.1", port: int = 8000, **options: object
) -> None:
    """Serve runs (and their bases) over an OpenAI-compatible API until interrupted; the
    options are those of `tunesmith.serve.serve` (api_key_file, max_batch, limits, …)."""
    from tunesmith.serve import serve as run_server

    run_server(run_dirs, host=host, port=port, **options)


def monitor(
    run_dir: Path,
    inputs: Path,
    *,
    window: int | str | None = None,
    since: datetime | str | None = None,
    out_dir: Path | None = None,
    draws: int | None = None,
    alpha: float | None = None,
    seed: int = 0,
    to_label: int = 50,
    perplexity: bool = True,
    perplexity_sample: int | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> MonitorResult:
    """Test live inputs (a request log or any data file) for drift against the run's training
    inputs; write ``result.json``, ``to_label.jsonl`` and ``report.html`` (default
    ``RUN_DIR/monitor/``). ``perplexity`` scores prompts with the run's fine-tuned
    model (skipped when the run has no weights): ``perplexity_sample`` prompts of each
    window (default 100), its null drawn at that size. ``window`` is a count (500) or a
    duration ("1h"); the verdict (``result.drifted``) is the newest window's, after Holm
    correction across signals."""
    from tunesmith.monitor.calibrate import DEFAULT_ALPHA, DEFAULT_DRAWS
    from tunesmith.monitor.inputs import parse_since
    from tunesmith.monitor.output import write_outputs
    from tunesmith.monitor.run import MonitorSettings, monitor_run
    from tunesmith.monitor.signals import PERPLEXITY_SAMPLE
    from tunesmith.monitor.windows import parse_window

    settings = MonitorSettings(
        window=parse_window(str(window)) if window is not None else None,
        since=parse_since(since) if isinstance(since, str) else since,
        out_dir=out_dir,
        draws=draws or DEFAULT_DRAWS,
        alpha=alpha or DEFAULT_ALPHA,
        seed=seed,
        to_label=to_label,
        perplexity=perplexity,
        perplexity_sample=PERPLEXITY_SAMPLE if perplexity_sample is None else perplexity_sample,
    )
    result = monitor_run(Path(run_dir), Path(inputs), settings, on_progress or (lambda _: None))
    result.paths = write_outputs(result, to_label)
    return result


def retrain(
    run_dir: Path,
    added: Path,
    *,
    start: str = "base",
    margin: float | None = None,
    seed: int = 0,
    on_progress: Callable[[str], None] | None = None,
) -> RetrainResult:
    """Train ``<name>-vN`` on the run's data plus ``added`` (labelled rows, e.g. a checked
    ``to_label.jsonl``), compare it with the champion on the old test split and on a slice
    carved from the new rows (paired bootstrap), and point ``<family>.promoted.json`` at it
    only if it is better on the new slice and within ``margin`` on the old one.
    ``run_dir`` may be that pointer; ``start`` is "base" or "continue" (train on top of the
    champion's merged weights)."""
    from tunesmith.monitor.gate import DEFAULT_MARGIN
    from tunesmith.monitor.retrain import retrain_run

    return retrain_run(
        Path(run_dir), Path(added), start=start,
        margin=DEFAULT_MARGIN if margin is None else margin, seed=seed,
        on_progress=on_progress or (lambda _: None),
    )  # fmt: skip
