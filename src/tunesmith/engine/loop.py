"""The training loop: optimizer steps over token-normalised accumulation windows.

Numerics every method and objective share live here and nowhere else:
the loss of an optimizer step is the sum over all trained tokens of its whole
accumulation window (on every process) divided by their count, so batch 8 x
accumulation 1 equals batch 2 x accumulation 4 exactly. The data order is a pure
function of (seed, epoch), so a resumed run replays the same batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config import TrainConfig
from tunesmith.data.batching import epoch_order
from tunesmith.engine.parallel import Parallel, Processes, Replicated
from tunesmith.engine.progress import TrainingProgress
from tunesmith.engine.schedule import build_scheduler
from tunesmith.errors import TunesmithError
from tunesmith.objectives import Objective


class TrainingError(TunesmithError):
    """Training could not continue (e.g. repeated non-finite loss); the message says why."""


@dataclass
class LoopState:
    """Everything needed to continue exactly where a run stopped."""

    step: int = 0
    epoch: int = 0
    micro_batches_done_in_epoch: int = 0
    tokens_seen: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    nonfinite_in_a_row: int = 0
    eval_pending: bool = False
    """A stop arrived during this step's validation: the resumed run validates first."""
    val_history: list[tuple[int, float]] = field(default_factory=list)
    train_history: list[tuple[int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> LoopState:
        state = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        state.val_history = [tuple(item) for item in state.val_history]  # type: ignore[misc]
        state.train_history = [tuple(item) for item in state.train_history]  # type: ignore[misc]
        return state


@dataclass
class LoopResult:
    state: LoopState
    stopped_early: bool
    stopped_by_signal: bool
    steps_run: int
    seconds: float
    real_tokens_per_second: float
    best_trainable_state: dict[str, torch.Tensor] | None
    warnings: list[str]


@dataclass
class StepPlan:
    """How micro-batches map to optimizer steps for one run (the same on every process)."""

    batch_size: int
    accumulation: int
    world_size: int
    micro_batches_per_epoch: int

    @classmethod
    def of(cls, settings: TrainConfig, examples: int, world_size: int) -> StepPlan:
        micro_batches = math.ceil(examples / settings.batch_size)
        return cls(settings.batch_size, settings.gradient_accumulation, world_size, micro_batches)

    @property
    def micro_batches_per_step(self) -> int:
        return self.accumulation * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.micro_batches_per_epoch / self.micro_batches_per_step))

    def total_steps(self, epochs: float, max_steps: int | None) -> int:
        return max_steps if max_steps else max(1, math.ceil(epochs * self.steps_per_epoch))


def planned_steps(settings: TrainConfig, examples: int, world_size: int) -> int:
    """The optimizer steps a run of ``examples`` training examples takes."""
    return StepPlan.of(settings, examples, world_size).total_steps(
        settings.epochs, settings.max_steps
    )


def evaluate_loss(
    model: nn.Module,
    objective: Objective,
    examples: Sequence[Any],
    *,
    batch_size: int,
    pad_token_id: int,
    pack: bool,
    row_length: int,
    device: torch.device,
    max_tokens_per_forward: int = 1 << 30,
    parallel: Parallel | None = None,
    stop_requested: Callable[[], bool] | None = None,
) -> float | None:
    """Mean loss per trained token over a whole set (no sampling, deterministic).

    Every process evaluates the whole set, so all of them take the same decisions from it.
    Returns None when ``stop_requested`` turns true between batches: a long validation pass
    must not outlast a scheduler's grace period.
    """
    if not examples:
        return float("nan")
    parallel = parallel or Replicated(model, objective, Processes())
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    with torch.no_grad():
        for start in range(0, len(ordered), batch_size):
            if stop_requested is not None and stop_requested():
                model.train(was_training)
                return None
            chunk = [examples[i] for i in ordered[start : start + batch_size]]
            batch = objective.collate(
                chunk, pad_token_id=pad_token_id, pack=pack, row_length=row_length
            ).to(device)
            for piece in (
                batch.split(max_tokens_per_forward) if hasattr(batch, "split") else [batch]
            ):
                loss_sum, units = parallel.loss_sum(piece)
                total += float(loss_sum)
                count += units
    model.train(was_training)
    return total / max(1, count)


def backward_window(
    model: nn.Module,
    objective: Objective,
    micro_batches: Sequence[Sequence[Any]],
    *,
    window_tokens: int,
    pad_token_id: int,
    pack: bool,
    row_length: int,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    max_tokens_per_forward: int = 1 << 30,
    parallel: Parallel | None = None,
    filler: Sequence[Any] = (),
) -> tuple[torch.Tensor, int, list[str]]:
    """Accumulate the gradients of one optimizer step: every micro-batch's summed loss is
    divided by the trained tokens of the whole window (all processes), never per micro-batch.

    When the strategy needs every process to run as many passes as the busiest one (FSDP),
    or at least one (DDP), the missing passes run ``filler`` examples with weight zero. Only
    the last pass reduces gradients across processes (DDP's ``no_sync`` before it).
    Returns the window's summed loss (float64), its real tokens and the example sources.
    """
    parallel = parallel or Replicated(model, objective, Processes())

    def pieces_of(group: Sequence[Any]) -> tuple[Any, list[Any]]:
        batch = objective.collate(
            group, pad_token_id=pad_token_id, pack=pack, row_length=row_length
        ).to(device)
        return batch, batch.split(max_tokens_per_forward) if hasattr(batch, "split") else [batch]

    step_loss = torch.zeros((), dtype=torch.float64, device=device)
    real_tokens = 0
    sources: list[str] = []
    pieces: list[tuple[Any, float]] = []
    for group in micro_batches:
        batch, split = pieces_of(group)
        sources.extend(str(source) for source in batch.sources)
        real_tokens += batch.real_tokens
        pieces.extend((piece, 1.0) for piece in split)
    missing = parallel.forwards_to_run(len(pieces)) - len(pieces)
    if missing:
        pieces.extend([(pieces_of(filler)[1][0], 0.0)] * missing)
    for index, (piece, weight) in enumerate(pieces):
        with parallel.gradient_pass(last=index == len(pieces) - 1):
            with _autocast(device, autocast_dtype):
                loss_sum, _units = parallel.loss_sum(piece)
            (loss_sum * (weight / max(1, window_tokens))).backward()
        if weight:
            step_loss += loss_sum.detach().double()
    return step_loss, real_tokens, sources


def run_loop(
    model: nn.Module,
    objective: Objective,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    *,
    settings: TrainConfig,
    learning_rate: float,
    pad_token_id: int,
    row_length: int,
    pack: bool,
    device: torch.device,
    metrics_path: Path,
    progress: TrainingProgress,
    autocast_dtype: torch.dtype | None = None,
    parallel: Parallel | None = None,
    resume: Callable[
        [torch.optim.Optimizer, object], tuple[LoopState, dict[str, torch.Tensor] | None]
    ]
    | None = None,
    save: Callable[[LoopState, torch.optim.Optimizer, object, float | None], None] | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    on_metrics: Callable[[dict[str, Any]], None] | None = None,
) -> LoopResult:
    """Train until the planned steps are done, early stopping fires, or a stop is requested.

    `resume` restores model/optimizer/scheduler/RNG and returns the saved LoopState and the
    best step's trainable weights; `save` writes a checkpoint. Both come from the caller, so
    the loop stays free of storage concerns. ``parallel`` says how processes share the model
    (one process holding it whole when omitted).
    """
    parallel = parallel or Replicated(model, objective, Processes())
    world_size, rank = parallel.processes.world_size, parallel.processes.rank
    lengths = [len(example) for example in train_examples]
    plan = StepPlan.of(settings, len(train_examples), world_size)
    total_steps = planned_steps(settings, len(train_examples), world_size)

    parameters = [p for p in parallel.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=learning_rate, weight_decay=settings.weight_decay, betas=(0.9, 0.999)
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_ratio=settings.warmup_ratio,
        kind=settings.lr_scheduler,
    )
    state, best_state = resume(optimizer, scheduler) if resume else (LoopState(), None)
    start_step = state.step
    warnings: list[str] = []
    stopped_early = stopped_by_signal = False

    def batches_of_epoch(epoch: int) -> list[list[int]]:
        return epoch_order(lengths, settings.batch_size, settings.seed, epoch)

    order = batches_of_epoch(state.epoch)
    parallel.module.train()
    started = time.perf_counter()
    real_tokens_run = 0
    # Throughput counts the seconds spent training, not validation passes or checkpoint
    # writes, so tokens/s stays comparable between runs that evaluate more or less often.
    training_seconds = 0.0
    samples_path = metrics_path.with_name(f"samples.rank{rank}.jsonl")
    if start_step:
        for log in [metrics_path, samples_path] if rank == 0 else [samples_path]:
            rewind_log(log, start_step)
    with (
        metrics_path.open("a", encoding="utf-8") as metrics,
        samples_path.open("a", encoding="utf-8") as samples,
    ):

        def emit(record: dict[str, Any]) -> None:
            if rank != 0:
                return
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if on_metrics is not None:
                on_metrics(record)

        def validate(train_loss: float) -> float | None:
            """Evaluate, keep the best weights and decide early stopping; None if a stop
            arrived meanwhile (then the checkpoint says so and the resumed run redoes it)."""
            nonlocal best_state, stopped_early
            val_loss = evaluate_loss(
                model,
                objective,
                val_examples,
                max_tokens_per_forward=settings.max_tokens_per_forward,
                batch_size=settings.batch_size,
                pad_token_id=pad_token_id,
                pack=pack,
                row_length=row_length,
                device=device,
                parallel=parallel,
                stop_requested=stop_requested,
            )
            state.eval_pending = val_loss is None
            if val_loss is None:
                progress.message(f"step {state.step}: stopped during validation")
                if save:
                    save(state, optimizer, scheduler, None)
                return None
            state.val_history.append((state.step, val_loss))
            emit({"step": state.step, "val_loss": val_loss})
            progress.message(
                f"step {state.step}: val_loss {val_loss:.4f}  train_loss {train_loss:.4f}"
            )
            improved = state.best_val_loss is None or (
                val_loss < state.best_val_loss - settings.early_stopping_min_delta
            )
            if improved:
                state.best_val_loss, state.best_step = val_loss, state.step
                state.evals_without_improvement = 0
                best_state = parallel.trainable_state()
            else:
                state.evals_without_improvement += 1
            warning = overfitting_warning(state.val_history, state.train_history)
            if warning and warning not in warnings:
                warnings.append(warning)
                progress.message(f"[yellow]warning:[/yellow] {warning}")
            patience = settings.early_stopping_patience
            if patience and state.evals_without_improvement >= patience:
                stopped_early = True
                progress.message(
                    f"early stopping at step {state.step}: no improvement in {patience} "
                    f"evaluations; best step {state.best_step} "
                    f"(val_loss {state.best_val_loss:.4f})"
                )
            return val_loss

        save_every = settings.save_every or settings.eval_every

        def due_for_save() -> bool:
            return bool(
                save
                and (state.step % save_every == 0 or state.step == total_steps or stopped_early)
            )

        if state.eval_pending:
            # The run was stopped during this step's validation: finish it first.
            last_train_loss = state.train_history[-1][1] if state.train_history else math.nan
            if validate(last_train_loss) is None:
                stopped_by_signal = True
            elif due_for_save():
                save(state, optimizer, scheduler, state.val_history[-1][1])

        while state.step < total_steps and not stopped_early and not stopped_by_signal:
            step_started = time.perf_counter()
            if state.micro_batches_done_in_epoch >= len(order):
                state.epoch += 1
                state.micro_batches_done_in_epoch = 0
                order = batches_of_epoch(state.epoch)
            window = order[
                state.micro_batches_done_in_epoch : state.micro_batches_done_in_epoch
                + plan.micro_batches_per_step
            ]
            window_examples = [[train_examples[i] for i in ids] for ids in window]
            window_tokens = sum(objective.units(e) for group in window_examples for e in group)
            mine = window_examples[rank::world_size]

            step_loss, step_real_tokens, sources = backward_window(
                model,
                objective,
                mine,
                window_tokens=window_tokens,
                pad_token_id=pad_token_id,
                pack=pack,
                row_length=row_length,
                device=device,
                autocast_dtype=autocast_dtype,
                max_tokens_per_forward=settings.max_tokens_per_forward,
                parallel=parallel,
                filler=window_examples[0][:1],
            )
            parallel.finish_gradients(parameters, step_loss)
            loss_value = float(step_loss) / max(1, window_tokens)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm))

            state.micro_batches_done_in_epoch += len(window)
            # Which examples this process trained on at each step: an audit trail for
            # resume and multi-process runs, and for finding the rows behind a bad step.
            samples.write(json.dumps({"step": state.step + 1, "examples": sources}) + "\n")
            samples.flush()
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                optimizer.zero_grad(set_to_none=True)
                state.nonfinite_in_a_row += 1
                emit(
                    {
                        "step": state.step + 1,
                        "event": "nonfinite_skipped",
                        "loss": str(loss_value),
                        "grad_norm": str(grad_norm),
                        "examples": sources,
                    }
                )
                progress.message(
                    f"step {state.step + 1}: non-finite loss/gradient, step skipped "
                    f"(examples {', '.join(sources[:5])})"
                )
                if state.nonfinite_in_a_row >= settings.max_nonfinite_steps:
                    raise TrainingError(
                        f"{state.nonfinite_in_a_row} non-finite steps in a row; stopped without "
                        "saving non-finite weights. Lower train.learning_rate or inspect the "
                        f"examples named in {metrics_path}."
                    )
                continue
            state.nonfinite_in_a_row = 0
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens_seen += step_real_tokens * world_size
            real_tokens_run += step_real_tokens * world_size
            state.train_history.append((state.step, loss_value))

            training_seconds += time.perf_counter() - step_started
            tokens_per_s = real_tokens_run / max(training_seconds, 1e-9)
            if state.step % settings.log_every == 0 or state.step == total_steps:
                emit(
                    {
                        "step": state.step,
                        "epoch": round(
                            state.epoch + state.micro_batches_done_in_epoch / max(1, len(order)), 4
                        ),
                        "train_loss": loss_value,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm,
                        "tokens": state.tokens_seen,
                        "tokens_per_s": tokens_per_s,
                    }
                )
            progress.advance_to(state.step, {"loss": loss_value, "tok/s": round(tokens_per_s, 1)})

            should_eval = val_examples and (
                state.step % settings.eval_every == 0 or state.step == total_steps
            )
            val_loss = validate(loss_value) if should_eval else None
            if should_eval and val_loss is None:
                stopped_by_signal = True
                break
            if due_for_save():
                save(state, optimizer, scheduler, val_loss)
            if stop_requested():
                stopped_by_signal = True
                if save and state.step % save_every != 0 and state.step != total_steps:
                    save(state, optimizer, scheduler, val_loss)
                break

    seconds = time.perf_counter() - started
    return LoopResult(
        state=state,
        stopped_early=stopped_early,
        stopped_by_signal=stopped_by_signal,
        steps_run=state.step - start_step,
        seconds=seconds,
        real_tokens_per_second=real_tokens_run / max(training_seconds, 1e-9),
        best_trainable_state=best_state,
        warnings=warnings,
    )


def rewind_log(path: Path, step: int) -> None:
    """Drop the lines of a JSON-lines log that lie beyond ``step``.

    A run stopped after its last checkpoint logged steps the resumed run takes again; without
    this the loss curve would hold them twice. A line cut short by a kill is dropped too.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line if line.endswith("\n") else line + "\n")
    staged = path.with_name(path.name + ".rewind")
    staged.write_text("".join(kept), encoding="utf-8")
    staged.replace(path)


def overfitting_warning(
    val_history: Sequence[tuple[int, float]], train_history: Sequence[tuple[int, float]]
) -> str | None:
    """Validation loss rose over the last two evaluations while training loss kept falling."""
    if len(val_history) < 3:
        return None
    (s0, v0), (_, v1), (s2, v2) = val_history[-3:]
    if not (v2 > v1 > v0):
        return None
    before = [loss for step, loss in train_history if step <= s0][-5:]
    after = [loss for step, loss in train_history if step <= s2][-5:]
    if before and after and sum(after) / len(after) < sum(before) / len(before):
        return (
            f"possible overfitting: validation loss rose from {v0:.4f} (step {s0}) to {v2:.4f} "
            f"(step {s2}) while training loss fell. The best step is kept as final; consider "
            "fewer epochs, a lower learning rate, or more data."
        )
    return None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
