"""Writing a run's checkpoints from every process: gathering is collective, rank 0 writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunesmith.engine import checkpoint as ckpt
from tunesmith.engine.loop import LoopState
from tunesmith.engine.parallel import Parallel, Processes


@dataclass
class CheckpointWriter:
    """Saves a resumable checkpoint of the run in ``run_dir`` and rotates old ones.

    ``contract`` (see `engine.resume.resume_contract`) and the resolved ``config`` go into
    every checkpoint, so a resume can check it continues the same run.
    """

    run_dir: Path
    parallel: Parallel
    processes: Processes
    contract: dict[str, object]
    config: dict[str, object]
    keep: int

    def __call__(self, state: LoopState, optimizer, scheduler, metric: float | None) -> None:
        weights = self.parallel.trainable_state()
        optimizer_state = self.parallel.optimizer_state(optimizer)
        rng_states = self.processes.gather_to_first(ckpt.capture_rng())
        if self.processes.rank == 0:
            ckpt.save_checkpoint(
                self.run_dir,
                state.step,
                trainable_state=weights,
                optimizer_state=optimizer_state,
                scheduler=scheduler,
                rng=rng_states,
                train_state={**self.contract, "loop": state.to_dict(), "config": self.config},
                metric=metric,
            )
            ckpt.rotate_checkpoints(self.run_dir, self.keep, state.best_step)
        self.processes.barrier()
