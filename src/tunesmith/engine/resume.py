"""The resume contract: what a continued run must share with the run that saved it.

A checkpoint stores the contract of its run; resuming compares every key and refuses any
difference (data, batches, schedule, what is trained) unless the user allows it, in which
case each difference is listed. Restoring then puts back weights, optimizer, scheduler,
random streams and the loop's position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.engine import checkpoint as ckpt
from tunesmith.engine.loop import LoopState
from tunesmith.engine.parallel import Parallel


def resume_contract(
    *,
    data_fingerprint: str,
    micro_batch_size: int,
    gradient_accumulation: int,
    world_size: int,
    strategy: str,
    seed: int,
    total_steps: int,
    learning_rate: float,
    lr_scheduler: str,
    warmup_ratio: float,
    model: str,
    method: dict[str, object],
    objective: dict[str, object],
) -> dict[str, object]:
    """The flat dict a checkpoint stores and a resume compares key by key."""
    return {
        "data_fingerprint": data_fingerprint,
        "effective_batch_size": micro_batch_size * gradient_accumulation * world_size,
        "micro_batch_size": micro_batch_size,
        "gradient_accumulation": gradient_accumulation,
        "world_size": world_size,
        "strategy": strategy,
        "seed": seed,
        "total_steps": total_steps,
        "learning_rate": learning_rate,
        "lr_scheduler": lr_scheduler,
        "warmup_ratio": warmup_ratio,
        "model": model,
        **{f"method.{key}": value for key, value in method.items()},
        **{f"objective.{key}": value for key, value in objective.items()},
    }


@dataclass
class Resumer:
    """Restores a run from ``checkpoint`` (None: a fresh start) under ``contract``."""

    checkpoint: Path | None
    contract: dict[str, object]
    parallel: Parallel
    rank: int
    checkpoints_dir: Path
    allow_mismatch: bool = False
    say: Callable[[str], None] = print

    def __call__(self, optimizer, scheduler) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
        """The loop state to continue from and the best weights so far (if not current)."""
        if self.checkpoint is None:
            return LoopState(), None
        saved = ckpt.load_checkpoint(self.checkpoint)
        self._check(saved.train_state)
        self.parallel.load_trainable_state(saved.trainable_state)
        self.parallel.load_optimizer_state(optimizer, saved.optimizer_state)
        scheduler.load_state_dict(saved.scheduler_state)
        # Each process continues its own random streams (dropout masks differ per process).
        rng_state = saved.rng_state_of_rank(self.rank) or saved.rng_state
        if rng_state is not None:
            ckpt.restore_rng(rng_state)
        state = LoopState.from_dict(saved.train_state["loop"])
        if self.rank == 0:
            self._announce(state)
        return state, self._best_weights(state, saved.trainable_state)

    def _announce(self, state: LoopState) -> None:
        total = self.contract["total_steps"]
        self.say(f"resumed from {self.checkpoint} at step {state.step} of {total}")
        if state.step >= total and not state.eval_pending:  # type: ignore[operator]
            self.say(
                f"nothing left to train: the checkpoint completes the {total} planned steps; "
                "final/ is written from it (raise train.max_steps or train.epochs with "
                "--resume-allow-mismatch to train further)"
            )

    def _check(self, saved: dict[str, object]) -> None:
        if not self.allow_mismatch:
            ckpt.check_resume_compatible(saved, self.contract)
        elif (differences := ckpt.resume_differences(saved, self.contract)) and self.rank == 0:
            self.say(
                "[yellow]warning:[/yellow] resuming although these changed; the run is no "
                "longer an exact continuation:\n" + "\n".join(differences)
            )

    def _best_weights(
        self, state: LoopState, current: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor] | None:
        if state.best_step == state.step:
            return current
        if state.best_step is None:
            return None
        return ckpt.load_checkpoint(
            self.checkpoints_dir / f"step-{state.best_step}"
        ).trainable_state
