"""Knowledge distillation: match a teacher's next-token distribution on the trained tokens.

Loss per trained token: ``alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · NLL``,
where ``_T`` is the softmax at temperature T (T² keeps the gradient scale of the
soft term independent of T; Hinton et al. 2015). The teacher is another causal
LM with the same tokenizer, run under ``no_grad`` on the same (packed) batch.
Logits of both models exist only for one chunk of trained positions at a time,
recomputed in the backward pass, as for the plain NLL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedTokenizerBase

from tunesmith.data.batching import Batch
from tunesmith.data.records import Record, Source
from tunesmith.data.tokenize import TokenizedExample
from tunesmith.objectives.errors import ObjectiveError
from tunesmith.objectives.losses import LOGIT_CHUNK_ROWS, selected_hidden_and_targets
from tunesmith.objectives.registry import ModelSource, ObjectiveSettings, Registration, register
from tunesmith.objectives.sft import SFT


def _chunk_distillation_sum(
    head: nn.Module,
    teacher_head: nn.Module,
    hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    logits = head(hidden).float()
    with torch.no_grad():
        teacher_logits = teacher_head(teacher_hidden).float()
    kd = F.kl_div(
        F.log_softmax(logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        log_target=True,
        reduction="sum",
    )
    nll = F.cross_entropy(logits, targets, reduction="sum")
    return alpha * temperature**2 * kd + (1 - alpha) * nll


class Distillation:
    """SFT data and batching; the loss mixes the teacher's soft targets with the NLL.

    ``load_teacher`` is called once, on the first loss; the teacher is frozen, put in
    eval mode and moved to the student's device. Without it (the registered instance) the
    objective tokenizes and collates, and computing a loss says how to give it a teacher.
    """

    name = "distill"

    def __init__(
        self,
        load_teacher: Callable[[], nn.Module] | None = None,
        *,
        temperature: float = 2.0,
        alpha: float = 0.5,
    ) -> None:
        self._sft = SFT()  # data and batching are SFT's; only the loss differs
        self._load_teacher = load_teacher
        self._teacher: nn.Module | None = None
        self.temperature = temperature
        self.alpha = alpha

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        records: Sequence[Record],
        *,
        max_length: int,
        on_overlength: str,
    ) -> tuple[list[TokenizedExample], list[tuple[str, Source]]]:
        return self._sft.tokenize(
            tokenizer, records, max_length=max_length, on_overlength=on_overlength
        )

    def units(self, example: TokenizedExample) -> int:
        return self._sft.units(example)

    def collate(
        self,
        examples: Sequence[TokenizedExample],
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
    ) -> Batch:
        return self._sft.collate(
            examples, pad_token_id=pad_token_id, pack=pack, row_length=row_length
        )

    def teacher_for(self, student: nn.Module) -> nn.Module:
        if self._teacher is None:
            if self._load_teacher is None:
                raise ObjectiveError(
                    "objective distill has no teacher: set objective.teacher and build the "
                    "objective with tunesmith.objectives.build_objective(...)."
                )
            teacher = self._load_teacher()
            teacher.requires_grad_(False)
            teacher.eval()
            self._teacher = teacher.to(next(student.parameters()).device)
        return self._teacher

    def loss_sum(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        student = selected_hidden_and_targets(model, batch)
        if student is None:
            raise ObjectiveError(
                "objective distill reads the student's hidden states, which prefix and prompt "
                "tuning do not expose. Use method lora, dora, ia3, adapter, freeze or full."
            )
        hidden, targets, head = student
        teacher = self.teacher_for(model)
        with torch.no_grad():
            teacher_selected = selected_hidden_and_targets(teacher, batch)
        assert teacher_selected is not None, "the teacher is a plain causal LM"
        teacher_hidden, _targets, teacher_head = teacher_selected
        if teacher_head.weight.shape[0] != head.weight.shape[0]:
            raise ObjectiveError(
                f"objective.teacher predicts {teacher_head.weight.shape[0]} tokens but the "
                f"student {head.weight.shape[0]}: distillation needs a teacher with the same "
                "tokenizer and vocabulary as model.name."
            )
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS):
            rows = slice(start, start + LOGIT_CHUNK_ROWS)
            arguments = (
                head,
                teacher_head,
                hidden[rows],
                teacher_hidden[rows],
                targets[rows],
                self.temperature,
                self.alpha,
            )
            if torch.is_grad_enabled():
                total = total + checkpoint(_chunk_distillation_sum, *arguments, use_reentrant=False)
            else:
                total = total + _chunk_distillation_sum(*arguments)
        return total, int(targets.numel())


class DistillSettings(ObjectiveSettings):
    name: Literal["distill"] = "distill"
    teacher: str | None = Field(
        None, description="Teacher model name or dir (same tokenizer as model.name)."
    )
    temperature: float = Field(2.0, gt=0, description="Softmax temperature of both models.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KD term vs the NLL.")


def _build(settings: DistillSettings, models: ModelSource | None) -> Distillation:
    if models is None:
        return Distillation(temperature=settings.temperature, alpha=settings.alpha)
    teacher = settings.teacher
    if teacher is None:
        raise ObjectiveError(
            "objective distill needs objective.teacher: a model name or local model dir "
            "with the same tokenizer as model.name."
        )
    return Distillation(
        lambda: models.load(teacher), temperature=settings.temperature, alpha=settings.alpha
    )


register(Registration("distill", DistillSettings, _build, verdict="task", shardable=True))
