"""The frozen model a policy is kept close to (DPO/IPO, the KL penalty of RLHF).

For peft adapters the reference is the trained model itself with its adapter
disabled: no second copy in memory, and it is the base model on a resumed run
too. Methods that change the base weights (full, freeze, bottleneck adapters)
need a second, frozen copy. It is *loaded* from the base model on first use,
not deep-copied from the model being trained: a copy taken at the first loss
of a resumed run would be the resumed weights, not the base.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from peft import PeftModel
from torch import nn

from tunesmith.objectives.errors import ObjectiveError

Result = TypeVar("Result")


class ReferenceModel:
    """Runs a computation on the reference under `torch.no_grad()`.

    ``load_frozen`` returns the base model; it is called at most once, and only when the
    trained model is not a peft model.
    """

    def __init__(self, load_frozen: Callable[[], nn.Module] | None = None) -> None:
        self._load_frozen = load_frozen
        self._frozen: nn.Module | None = None

    @property
    def loaded_copy(self) -> nn.Module | None:
        """The frozen base copy, once one was needed and loaded."""
        return self._frozen

    def _frozen_copy(self, model: nn.Module) -> nn.Module:
        if self._frozen is None:
            if self._load_frozen is None:
                raise ObjectiveError(
                    "this objective compares against a frozen reference model, and the method "
                    "does not use a peft adapter that can be switched off. Build the objective "
                    "with tunesmith.objectives.build_objective(...) so the base model can be "
                    "loaded as the reference, or use an adapter method such as lora."
                )
            frozen = self._load_frozen()
            frozen.requires_grad_(False)
            frozen.eval()
            self._frozen = frozen.to(next(model.parameters()).device)
        return self._frozen

    def run(self, model: nn.Module, compute: Callable[[nn.Module], Result]) -> Result:
        with torch.no_grad():
            if isinstance(model, PeftModel):
                with model.disable_adapter():
                    return compute(model)
            return compute(self._frozen_copy(model))
