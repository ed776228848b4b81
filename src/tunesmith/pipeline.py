"""`tunesmith train` as a Python function: data → model → method → loop → final artifact.

This module only composes the stages; each stage's logic lives in its own package.
The CLI and the Python API both call `train`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console

from tunesmith.config import RunConfig
from tunesmith.data.cache import tokenize_with_cache
from tunesmith.data.load import prepare_configured_records
from tunesmith.engine import checkpoint as ckpt
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import (
    Checkpointer,
    LoopOutput,
    LoopSettings,
    LoopState,
    TrainingError,
    evaluate_loss,
    planned_steps,
    run_loop,
)
from tunesmith.engine.parallel import (
    Processes,
    Replicated,
    build_parallel,
    strategy_from_launcher,
)
from tunesmith.engine.progress import TrainingProgress
from tunesmith.engine.signals import StopRequest
from tunesmith.engine.threads import configure_threads
from tunesmith.engine.trackers import Trackers
from tunesmith.methods import count_parameters, get_method
from tunesmith.models import (
    enable_gradient_checkpointing,
    load_base_model,
    pick_device,
    pick_dtype,
)
from tunesmith.objectives import (
    attach_objective_parameters,
    build_objective,
    save_objective_parameters,
)
from tunesmith.runs import RunPaths

PROMPT_LEARNING_METHODS = ("prefix", "prompt")


@dataclass
class TrainSummary:
    run_dir: Path
    rank: int
    final_dir: Path
    steps: int
    resumed_at_step: int | None
    """The checkpoint's step when the run continued one; ``steps`` counts from zero."""
    seconds: float
    real_tokens_per_second: float
    val_loss_before: float | None
    val_loss_after: float | None
    best_step: int | None
    trainable: int
    total: int
    stopped_early: bool
    stopped_by_signal: bool
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
        return json.dumps(data, indent=2)


def _tokenize(objective, records, tokenizer, config: RunConfig, report) -> list:
    examples, dropped, _hit, _file = tokenize_with_cache(
        objective,
        tokenizer,
        records,
        max_length=config.data.max_length,
        on_overlength=config.data.on_overlength,
    )
    for reason, source in dropped:
        report.add_dropped(reason, source)
    return examples


def _logged_val_loss_before_training(metrics: Path) -> float | None:
    """The validation loss the run measured at step 0, before the stop it resumes from."""
    if not metrics.exists():
        return None
    first = metrics.read_text(encoding="utf-8").partition("\n")[0]
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return None
    return record.get("val_loss") if record.get("step") == 0 else None


def _flattened(section: str, settings: dict[str, object]) -> dict[str, object]:
    return {f"{section}.{key}": value for key, value in settings.items()}


def _data_fingerprint(examples: list) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(dataclasses.asdict(example), default=str).encode())
    return digest.hexdigest()[:16]


def train(
    config: RunConfig,
    *,
    resume: str | None = None,
    allow_mismatch: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
) -> TrainSummary:
    """Fine-tune as `config` says and write the run directory; returns what was produced."""
    console = console or Console()
    processes = Processes.join()
    world_size, rank = processes.world_size, processes.rank
    strategy = strategy_from_launcher(config.train.strategy)
    threads = configure_threads(config.train.threads, processes.local_world_size)
    paths = RunPaths(config.run_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    # Before any model or data is loaded: a wrong --resume path fails in a second.
    resume_from = ckpt.resolve_resume(paths.root, resume) if resume else None
    if rank == 0:
        paths.config.write_text(config.to_yaml(), encoding="utf-8")

    prepared = prepare_configured_records(config.data)
    report = prepared.report

    device = pick_device(config.train.device)
    dtype = pick_dtype(config.train.precision, device)
    method = get_method(config.method.name)
    model_dtype = torch.float32 if device.type == "cpu" else dtype
    objective = build_objective(
        config.objective,
        model_loader=lambda name: (
            load_base_model(
                name, device=device, dtype=model_dtype, cache_dir=config.model.cache_dir
            ).model
        ),
        base_model=config.model.name,
    )

    def load_model_with_method():
        torch.manual_seed(config.train.seed)
        loaded = load_base_model(
            config.model.name,
            device=device,
            dtype=model_dtype,
            cache_dir=config.model.cache_dir,
            trust_remote_code=config.model.trust_remote_code,
            **method.base_load_options(config.method),
        )
        model = method.attach(loaded.model, config.method)
        attach_objective_parameters(objective, model)
        return model, loaded.tokenizer

    model, tokenizer = load_model_with_method()
    train_examples = _tokenize(objective, prepared.train, tokenizer, config, report)
    val_examples = _tokenize(objective, prepared.validation, tokenizer, config, report)
    report.set_token_stats(
        [len(e) for e in train_examples], [objective.units(e) for e in train_examples]
    )
    report.check_row_invariant()
    if rank == 0:
        report.write(paths.root)
    if not train_examples:
        raise TrainingError(
            f"no training examples left after tokenization; see {paths.data_report} for why."
        )

    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    trainable, total = count_parameters(model)
    parallel = build_parallel(strategy, model, objective, processes, method=method.name)
    pack = config.train.packing and config.method.name not in PROMPT_LEARNING_METHODS
    learning_rate = config.train.learning_rate or method.default_learning_rate
    effective = config.train.batch_size * config.train.gradient_accumulation * world_size
    if rank == 0:
        console.print(
            f"trainable: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)  "
            f"method {method.name}  objective {objective.name}  lr {learning_rate:g}\n"
            f"examples: {len(train_examples)} train, {len(val_examples)} validation  "
            f"effective batch size {effective} ({config.train.batch_size} x "
            f"{config.train.gradient_accumulation} accumulation x {world_size} process(es)"
            f"{f', {parallel.name}' if world_size > 1 else ''})  "
            f"device {device.type} ({threads} CPU threads)  "
            f"precision {str(dtype).removeprefix('torch.')}"
        )

    autocast = dtype if device.type == "cuda" and dtype != torch.float32 else None
    batches = BatchSettings.of(
        config.train,
        pad_token_id=tokenizer.pad_token_id,
        pack=pack,
        row_length=config.data.max_length,
        device=device,
    )
    total_steps = planned_steps(config.train, len(train_examples), world_size)
    # What a resumed run must share with the one that saved the checkpoint to continue it
    # exactly: the data, the batches, the schedule, and what is trained.
    compat = {
        "data_fingerprint": _data_fingerprint(train_examples),
        "effective_batch_size": effective,
        "micro_batch_size": config.train.batch_size,
        "gradient_accumulation": config.train.gradient_accumulation,
        "world_size": world_size,
        "strategy": parallel.name,
        "seed": config.train.seed,
        "total_steps": total_steps,
        "learning_rate": learning_rate,
        "lr_scheduler": config.train.lr_scheduler,
        "warmup_ratio": config.train.warmup_ratio,
        "model": str(config.model.name),
        **_flattened("method", config.method.model_dump(mode="json")),
        **_flattened("objective", config.objective.model_dump(mode="json")),
    }

    if resume and resume_from is None and rank == 0:
        console.print(f"no complete checkpoint in {paths.checkpoints}: starting fresh")
    if resume_from is None:
        if rank == 0:
            paths.metrics.write_text("", encoding="utf-8")
        paths.root.joinpath(f"samples.rank{rank}.jsonl").write_text("", encoding="utf-8")
        val_before = (
            evaluate_loss(model, objective, val_examples, batches=batches, parallel=parallel)
            if val_examples
            else None
        )
        if rank == 0 and val_before is not None:
            with paths.metrics.open("a") as stream:
                stream.write(json.dumps({"step": 0, "val_loss": val_before}) + "\n")
    else:
        val_before = _logged_val_loss_before_training(paths.metrics)

    def restore(optimizer, scheduler) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
        if resume_from is None:
            return LoopState(), None
        saved = ckpt.load_checkpoint(resume_from)
        if not allow_mismatch:
            ckpt.check_resume_compatible(saved.train_state, compat)
        elif (differences := ckpt.resume_differences(saved.train_state, compat)) and rank == 0:
            console.print(
                "[yellow]warning:[/yellow] resuming although these changed; the run is no "
                "longer an exact continuation:\n" + "\n".join(differences)
            )
        parallel.load_trainable_state(saved.trainable_state)
        parallel.load_optimizer_state(optimizer, saved.optimizer_state)
        scheduler.load_state_dict(saved.scheduler_state)
        # Each process continues its own random streams (dropout masks differ per process).
        rng_state = saved.rng_state_of_rank(rank) or saved.rng_state
        if rng_state is not None:
            ckpt.restore_rng(rng_state)
        state = LoopState.from_dict(saved.train_state["loop"])
        best = None
        if state.best_step == state.step:
            best = saved.trainable_state
        elif state.best_step is not None:
            best = ckpt.load_checkpoint(
                paths.checkpoints / f"step-{state.best_step}"
            ).trainable_state
        if rank == 0:
            console.print(f"resumed from {resume_from} at step {state.step} of {total_steps}")
            if state.step >= total_steps and not state.eval_pending:
                console.print(
                    f"nothing left to train: the checkpoint completes the {total_steps} planned "
                    "steps; final/ is written from it (raise train.max_steps or train.epochs "
                    "with --resume-allow-mismatch to train further)"
                )
        return state, best

    def save(state: LoopState, optimizer, scheduler, metric: float | None) -> None:
        # Gathering is collective: every process takes part, rank 0 writes.
        weights = parallel.trainable_state()
        optimizer_state = parallel.optimizer_state(optimizer)
        rng_states = processes.gather_to_first(ckpt.capture_rng())
        if rank == 0:
            ckpt.save_checkpoint(
                paths.root,
                state.step,
                trainable_state=weights,
                optimizer_state=optimizer_state,
                scheduler=scheduler,
                rng=rng_states,
                train_state={
                    **compat,
                    "loop": state.to_dict(),
                    "config": config.model_dump(mode="json"),
                },
                metric=metric,
            )
            ckpt.rotate_checkpoints(paths.root, config.train.keep_checkpoints, state.best_step)
        processes.barrier()

    trackers = Trackers(
        config.train.report_to if rank == 0 else [], paths.root, config.model_dump(mode="json")
    )
    with (
        StopRequest() as stop,
        TrainingProgress(total_steps, enabled=show_progress and rank == 0) as progress,
    ):
        result = run_loop(
            model,
            objective,
            train_examples,
            val_examples,
            settings=LoopSettings(config.train, learning_rate, autocast_dtype=autocast),
            batches=batches,
            output=LoopOutput(paths.metrics, progress, on_metrics=trackers.log),
            parallel=parallel,
            checkpointer=Checkpointer(restore=restore, save=save),
            stop_requested=lambda: processes.any(stop.requested),
        )
    trackers.close()
    resumed_at = result.state.step - result.steps_run if resume_from is not None else None

    finished = not result.stopped_by_signal
    if result.best_trainable_state is not None and finished:
        parallel.load_trainable_state(result.best_trainable_state)
    val_after = None
    if val_examples and finished:
        val_after = evaluate_loss(
            model, objective, val_examples, batches=batches, parallel=parallel
        )
    if finished:
        whole = model
        if not isinstance(parallel, Replicated):
            # A sharded model has no whole copy to save from: rank 0 rebuilds one.
            weights = parallel.trainable_state()
            if rank == 0:
                whole = load_model_with_method()[0]
                Replicated(whole, objective, Processes()).load_trainable_state(weights)
        if rank == 0:
            method.save(whole, paths.final)
            save_objective_parameters(objective, whole, paths.final)
            tokenizer.save_pretrained(paths.final)
    summary = TrainSummary(
        run_dir=paths.root,
        rank=rank,
        final_dir=paths.final,
        steps=result.state.step,
        resumed_at_step=resumed_at,
        seconds=round(result.seconds, 2),
        real_tokens_per_second=round(result.real_tokens_per_second, 1),
        val_loss_before=val_before,
        val_loss_after=val_after,
        best_step=result.state.best_step,
        trainable=trainable,
        total=total,
        stopped_early=result.stopped_early,
        stopped_by_signal=result.stopped_by_signal,
        warnings=result.warnings,
    )
    if rank == 0:
        paths.summary.write_text(summary.to_json(), encoding="utf-8")
    processes.barrier()
    return summary
