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
from tunesmith.engine.batches import BatchSettings
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


@dataclass(frozen=True)
class LoopSettings:
    """How the loop optimises: the run's train settings, the learning rate resolved for the
    method, and the dtype forward passes autocast to (None: the model's own)."""

    train: TrainConfig
    learning_rate: float
    autocast_dtype: torch.dtype | None = None


@dataclass(frozen=True)
class LoopOutput:
    """Where the loop reports: ``metrics_path`` (rank 0; every rank writes
    ``samples.rank<N>.jsonl`` beside it), the progress display, and ``on_metrics``, called
    with every metrics record (experiment trackers)."""

    metrics_path: Path
    progress: TrainingProgress
    on_metrics: Callable[[dict[str, Any]], None] | None = None


@dataclass(frozen=True)
class Checkpointer:
    """The caller's storage, so the loop stays free of it.

    ``restore`` puts model, optimizer, scheduler and RNG state back and returns the saved
    LoopState with the best step's trainable weights; ``save`` writes a checkpoint with the
    step's validation loss (None when there is none). Both are collective: every process
    calls them at the same points.
    """

    restore: Callable[
        [torch.optim.Optimizer, Any], tuple[LoopState, dict[str, torch.Tensor] | None]
    ]
    save: Callable[[LoopState, torch.optim.Optimizer, Any, float | None], None]


def evaluate_loss(
    model: nn.Module,
    objective: Objective,
    examples: Sequence[Any],
    *,
    batches: BatchSettings,
    parallel: Parallel | None = None,
    stop_requested: Callable[[], bool] | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> float | None:
    """Mean loss per trained token over a whole set (no sampling, deterministic), computed
    in the precision training autocasts to, so validation measures the model as trained.

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
    try:
        with torch.no_grad():
            for start in range(0, len(ordered), batches.batch_size):
                if stop_requested is not None and stop_requested():
                    return None
                chunk = [examples[i] for i in ordered[start : start + batches.batch_size]]
                for piece in batches.forward_pieces(batches.collate(objective, chunk)):
                    with _autocast(batches.device, autocast_dtype):
                        loss_sum, units = parallel.loss_sum(piece)
                    total += float(loss_sum)
                    count += units
    finally:
        model.train(was_training)
    return total / max(1, count)


def backward_window(
    model: nn.Module,
    objective: Objective,
    micro_batches: Sequence[Sequence[Any]],
    *,
    window_tokens: int,
    batches: BatchSettings,
    autocast_dtype: torch.dtype | None = None,
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
    step_loss = torch.zeros((), dtype=torch.float64, device=batches.device)
    real_tokens = 0
    sources: list[str] = []
    pieces: list[tuple[Any, float]] = []
    for group in micro_batches:
        batch = batches.collate(objective, group)
        sources.extend(str(source) for source in batch.sources)
        real_tokens += batch.real_tokens
        pieces.extend((piece, 1.0) for piece in batches.forward_pieces(batch))
    missing = parallel.forwards_to_run(len(pieces)) - len(pieces)
    if missing:
        filler_piece = batches.forward_pieces(batches.collate(objective, filler))[0]
        pieces.extend([(filler_piece, 0.0)] * missing)
    for index, (piece, weight) in enumerate(pieces):
        with parallel.gradient_pass(last=index == len(pieces) - 1):
            with _autocast(batches.device, autocast_dtype):
                loss_sum, _units = parallel.loss_sum(piece)
            (loss_sum * (weight / max(1, window_tokens))).backward()
        if weight:
            step_loss += loss_sum.detach().double()
    return step_loss, real_tokens, sources


def build_optimizer(
    parameters: Sequence[nn.Parameter], settings: LoopSettings, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the trainable parameters and the learning-rate schedule of the run."""
    optimizer = torch.optim.AdamW(
        parameters,
        lr=settings.learning_rate,
        weight_decay=settings.train.weight_decay,
        betas=(0.9, 0.999),
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_ratio=settings.train.warmup_ratio,
        kind=settings.train.lr_scheduler,
    )
    return optimizer, scheduler


class MetricsLog:
    """The loop's two logs: ``metrics.jsonl`` (rank 0: losses, evaluations, skipped steps)
    and ``samples.rank<N>.jsonl`` (every rank: which examples it trained on at each step, an
    audit trail for resume and multi-process runs, and for finding the rows behind a bad
    step). A resumed run first drops what either log holds beyond its checkpoint."""

    def __init__(self, output: LoopOutput, rank: int, resumed_at_step: int) -> None:
        self.path = output.metrics_path
        self._rank = rank
        self._on_metrics = output.on_metrics
        samples_path = self.path.with_name(f"samples.rank{rank}.jsonl")
        if resumed_at_step:
            for log in [self.path, samples_path] if rank == 0 else [samples_path]:
                rewind_log(log, resumed_at_step)
        self._metrics = self.path.open("a", encoding="utf-8")
        self._samples = samples_path.open("a", encoding="utf-8")

    def metric(self, record: dict[str, Any]) -> None:
        if self._rank != 0:
            return
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._on_metrics is not None:
            self._on_metrics(record)

    def trained_on(self, step: int, sources: Sequence[str]) -> None:
        self._samples.write(json.dumps({"step": step, "examples": list(sources)}) + "\n")
        self._samples.flush()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._metrics.close()
        self._samples.close()


def record_validation(state: LoopState, val_loss: float, settings: TrainConfig) -> bool:
    """Early stopping's bookkeeping: note ``val_loss`` at ``state.step``; True when it beats
    the best so far by more than ``early_stopping_min_delta`` (the caller keeps the weights)."""
    state.val_history.append((state.step, val_loss))
    improved = state.best_val_loss is None or (
        val_loss < state.best_val_loss - settings.early_stopping_min_delta
    )
    if improved:
        state.best_val_loss, state.best_step = val_loss, state.step
        state.evals_without_improvement = 0
    else:
        state.evals_without_improvement += 1
    return improved


def patience_exhausted(state: LoopState, settings: TrainConfig) -> bool:
    """Early stopping's decision: the last ``early_stopping_patience`` evaluations (None: never
    stop) brought no improvement."""
    patience = settings.early_stopping_patience
    return bool(patience and state.evals_without_improvement >= patience)


@dataclass
class StepOutcome:
    """What one accumulation window produced; ``real_tokens`` counts all processes."""

    loss: float
    grad_norm: float
    real_tokens: int
    sources: list[str]

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def run_loop(
    model: nn.Module,
    objective: Objective,
    train_examples: Sequence[Any],
    val_examples: Sequence[Any],
    *,
    settings: LoopSettings,
    batches: BatchSettings,
    output: LoopOutput,
    parallel: Parallel | None = None,
    checkpointer: Checkpointer | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> LoopResult:
    """Train until the planned steps are done, early stopping fires, or a stop is requested.

    ``checkpointer`` restores a run and saves checkpoints (nothing is stored without one);
    ``parallel`` says how processes share the model (one process holding it whole when
    omitted).
    """
    parallel = parallel or Replicated(model, objective, Processes())
    processes = parallel.processes
    plan = StepPlan.of(settings.train, len(train_examples), processes.world_size)
    total_steps = plan.total_steps(settings.train.epochs, settings.train.max_steps)
    parameters = [p for p in parallel.module.parameters() if p.requires_grad]
    optimizer, scheduler = build_optimizer(parameters, settings, total_steps)
    restored = checkpointer.restore(optimizer, scheduler) if checkpointer else None
    state, best_state = restored or (LoopState(), None)
    parallel.module.train()
    with MetricsLog(output, processes.rank, resumed_at_step=state.step) as log:
        loop = _Loop(
            model=model,
            objective=objective,
            train_examples=train_examples,
            val_examples=val_examples,
            settings=settings,
            batches=batches,
            parallel=parallel,
            plan=plan,
            total_steps=total_steps,
            parameters=parameters,
            optimizer=optimizer,
            scheduler=scheduler,
            state=state,
            best_state=best_state,
            log=log,
            progress=output.progress,
            checkpointer=checkpointer,
            stop_requested=stop_requested,
        )
        return loop.run()


@dataclass
class _Loop:
    """One call of `run_loop`: its composed parts, and the loop over them."""

    model: nn.Module
    objective: Objective
    train_examples: Sequence[Any]
    val_examples: Sequence[Any]
    settings: LoopSettings
    batches: BatchSettings
    parallel: Parallel
    plan: StepPlan
    total_steps: int
    parameters: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: LoopState
    best_state: dict[str, torch.Tensor] | None
    log: MetricsLog
    progress: TrainingProgress
    checkpointer: Checkpointer | None
    stop_requested: Callable[[], bool]
    warnings: list[str] = field(default_factory=list)
    stopped_early: bool = False
    stopped_by_signal: bool = False
    real_tokens_run: int = 0
    training_seconds: float = 0.0
    """Seconds spent training, not validating or checkpointing, so tokens/s stays comparable
    between runs that evaluate more or less often."""

    def run(self) -> LoopResult:
        started, start_step = time.perf_counter(), self.state.step
        order = self._epoch_order(self.state.epoch)
        if self.state.eval_pending:  # stopped during this step's validation: finish it first
            history = self.state.train_history
            if self.validate(history[-1][1] if history else math.nan) is None:
                self.stopped_by_signal = True
            elif self._save_due():
                self.save(self.state.val_history[-1][1])
        while not (
            self.state.step >= self.total_steps or self.stopped_early or self.stopped_by_signal
        ):
            step_started = time.perf_counter()
            if self.state.micro_batches_done_in_epoch >= len(order):
                self.state.epoch += 1
                self.state.micro_batches_done_in_epoch = 0
                order = self._epoch_order(self.state.epoch)
            done = self.state.micro_batches_done_in_epoch
            window = order[done : done + self.plan.micro_batches_per_step]
            outcome = self.optimizer_step([[self.train_examples[i] for i in w] for w in window])
            self.state.micro_batches_done_in_epoch += len(window)
            self.log.trained_on(self.state.step + 1, outcome.sources)
            if not outcome.finite:
                self.skip_nonfinite(outcome)
                continue
            self.count_step(outcome, time.perf_counter() - step_started, len(order))
            self.after_step(outcome.loss)
        return LoopResult(
            state=self.state,
            stopped_early=self.stopped_early,
            stopped_by_signal=self.stopped_by_signal,
            steps_run=self.state.step - start_step,
            seconds=time.perf_counter() - started,
            real_tokens_per_second=self.real_tokens_run / max(self.training_seconds, 1e-9),
            best_trainable_state=self.best_state,
            warnings=self.warnings,
        )

    def _epoch_order(self, epoch: int) -> list[list[int]]:
        lengths = [len(example) for example in self.train_examples]
        return epoch_order(lengths, self.settings.train.batch_size, self.settings.train.seed, epoch)

    def optimizer_step(self, window: Sequence[Sequence[Any]]) -> StepOutcome:
        """One window: this process's share of its micro-batches, gradients reduced over
        processes and clipped; the weights change only when loss and gradient are finite."""
        world_size, rank = self.parallel.processes.world_size, self.parallel.processes.rank
        window_tokens = sum(self.objective.units(e) for group in window for e in group)
        step_loss, real_tokens, sources = backward_window(
            self.model,
            self.objective,
            window[rank::world_size],
            window_tokens=window_tokens,
            batches=self.batches,
            autocast_dtype=self.settings.autocast_dtype,
            parallel=self.parallel,
            filler=window[0][:1],
        )
        self.parallel.finish_gradients(self.parameters, step_loss)
        max_norm = self.settings.train.max_grad_norm
        outcome = StepOutcome(
            loss=float(step_loss) / max(1, window_tokens),
            grad_norm=float(torch.nn.utils.clip_grad_norm_(self.parameters, max_norm)),
            real_tokens=real_tokens * world_size,
            sources=sources,
        )
        if outcome.finite:
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return outcome

    def skip_nonfinite(self, outcome: StepOutcome) -> None:
        """Name the examples of a non-finite step; stop after too many in a row."""
        self.state.nonfinite_in_a_row += 1
        step = self.state.step + 1
        self.log.metric(
            {
                "step": step,
                "event": "nonfinite_skipped",
                "loss": str(outcome.loss),
                "grad_norm": str(outcome.grad_norm),
                "examples": outcome.sources,
            }
        )
        self.progress.message(
            f"step {step}: non-finite loss/gradient, step skipped "
            f"(examples {', '.join(outcome.sources[:5])})"
        )
        if self.state.nonfinite_in_a_row >= self.settings.train.max_nonfinite_steps:
            raise TrainingError(
                f"{self.state.nonfinite_in_a_row} non-finite steps in a row; stopped without "
                "saving non-finite weights. Lower train.learning_rate or inspect the "
                f"examples named in {self.log.path}."
            )

    def count_step(self, outcome: StepOutcome, seconds: float, epoch_batches: int) -> None:
        """Advance the state past a taken step and log it (every ``log_every`` steps)."""
        state = self.state
        state.nonfinite_in_a_row = 0
        state.step += 1
        state.tokens_seen += outcome.real_tokens
        state.train_history.append((state.step, outcome.loss))
        self.real_tokens_run += outcome.real_tokens
        self.training_seconds += seconds
        tokens_per_s = self.real_tokens_run / max(self.training_seconds, 1e-9)
        if state.step % self.settings.train.log_every == 0 or state.step == self.total_steps:
            epoch = state.epoch + state.micro_batches_done_in_epoch / max(1, epoch_batches)
            self.log.metric(
                {
                    "step": state.step,
                    "epoch": round(epoch, 4),
                    "train_loss": outcome.loss,
                    "lr": self.scheduler.get_last_lr()[0],
                    "grad_norm": outcome.grad_norm,
                    "tokens": state.tokens_seen,
                    "tokens_per_s": tokens_per_s,
                }
            )
        self.progress.advance_to(
            state.step, {"loss": outcome.loss, "tok/s": round(tokens_per_s, 1)}
        )

    def after_step(self, train_loss: float) -> None:
        """Validate when due, then checkpoint when due or when a stop was asked for."""
        train, step = self.settings.train, self.state.step
        due = step % train.eval_every == 0 or step == self.total_steps
        val_loss = self.validate(train_loss) if self.val_examples and due else None
        if self.val_examples and due and val_loss is None:
            self.stopped_by_signal = True
            return
        if self._save_due():
            self.save(val_loss)
        if self.stop_requested():
            self.stopped_by_signal = True
            if not self._save_due():  # a stop between regular checkpoints saves one
                self.save(val_loss)

    def validate(self, train_loss: float) -> float | None:
        """The evaluation pass: validation loss, best weights, early stopping, overfitting
        warning. None if a stop arrived meanwhile (the checkpoint then says so, and the
        resumed run validates this step first)."""
        state = self.state
        val_loss = evaluate_loss(
            self.model,
            self.objective,
            self.val_examples,
            batches=self.batches,
            parallel=self.parallel,
            stop_requested=self.stop_requested,
            autocast_dtype=self.settings.autocast_dtype,
        )
        state.eval_pending = val_loss is None
        if val_loss is None:
            self.progress.message(f"step {state.step}: stopped during validation")
            self.save(None)
            return None
        self.log.metric({"step": state.step, "val_loss": val_loss})
        self.progress.message(
            f"step {state.step}: val_loss {val_loss:.4f}  train_loss {train_loss:.4f}"
        )
        if record_validation(state, val_loss, self.settings.train):
            self.best_state = self.parallel.trainable_state()
        warning = overfitting_warning(state.val_history, state.train_history)
        if warning and warning not in self.warnings:
            self.warnings.append(warning)
            self.progress.message(f"[yellow]warning:[/yellow] {warning}")
        if patience_exhausted(state, self.settings.train):
            self.stopped_early = True
            self.progress.message(
                f"early stopping at step {state.step}: no improvement in "
                f"{self.settings.train.early_stopping_patience} evaluations; best step "
                f"{state.best_step} (val_loss {state.best_val_loss:.4f})"
            )
        return val_loss

    def _save_due(self) -> bool:
        """A checkpoint is due every ``save_every`` steps (default ``eval_every``), at the
        last step, and when early stopping fired."""
        train, step = self.settings.train, self.state.step
        regular = step % (train.save_every or train.eval_every) == 0 or step == self.total_steps
        return regular or self.stopped_early

    def save(self, val_loss: float | None) -> None:
        """The checkpointer call (nothing without a checkpointer)."""
        if self.checkpointer is not None:
            self.checkpointer.save(self.state, self.optimizer, self.scheduler, val_loss)


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
