"""Preference optimisation on (prompt, chosen, rejected) pairs: DPO, IPO and ORPO.

Each pair is two rows of one padded (not packed) micro-batch, chosen rows first.
A sequence's log-probability is the sum over its reply tokens. The loss of a
pair is one unit, so a step's loss is the mean over the pairs of its whole
accumulation window.

- dpo:  -log σ(β · ((π_c − ref_c) − (π_r − ref_r)))            (Rafailov et al. 2023)
- ipo:  ((π_c − ref_c)/n_c − (π_r − ref_r)/n_r − 1/(2β))²       (Azar et al. 2023; per-token
        averages as in TRL, confirmed there with the IPO authors)
- orpo: NLL_c/n_c − β · log σ(log odds(p̄_c) − log odds(p̄_r)), p̄ = exp(mean token log-prob)
        (Hong et al. 2024); reference-free. The NLL is averaged per pair, not per token
        of the batch as in TRL, so that every pair weighs the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.batching import Batch, collate
from tunesmith.data.preference import PreferenceExample, tokenize_preferences
from tunesmith.data.records import Preference, Record, Source
from tunesmith.objectives.losses import sequence_logprob_sums, trained_tokens_per_row
from tunesmith.objectives.record_kinds import require_record_kinds
from tunesmith.objectives.reference import ReferenceModel
from tunesmith.objectives.registry import ModelSource, ObjectiveSettings, Registration, register

PREFERENCE_LOSSES = ("dpo", "ipo", "orpo")


@dataclass
class PairBatch:
    """Chosen rows ``[:pairs]`` then rejected rows ``[pairs:]``, right-padded with a mask."""

    sequences: Batch
    sources: list[Source]

    @property
    def pairs(self) -> int:
        return len(self.sources)

    @property
    def real_tokens(self) -> int:
        return self.sequences.real_tokens

    def to(self, device: torch.device) -> PairBatch:
        return PairBatch(self.sequences.to(device), self.sources)


def collate_pairs(examples: Sequence[PreferenceExample], *, pad_token_id: int) -> PairBatch:
    rows = [e.chosen for e in examples] + [e.rejected for e in examples]
    sequences = collate(rows, pad_token_id=pad_token_id, pack=False, row_length=0)
    return PairBatch(sequences, [e.source for e in examples])


def tokenize_preference_records(
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[Record],
    *,
    objective: str,
    max_length: int,
    on_overlength: str,
) -> tuple[list[PreferenceExample], list[tuple[str, Source]]]:
    """Preference records only (anything else is an error with file:line), tokenized."""
    require_record_kinds(
        records,
        (Preference,),
        objective=objective,
        expected="preference pairs (prompt, chosen, rejected)",
        fix="Give preference data (keys prompt/chosen/rejected, or input/preferred_output/"
        "non_preferred_output), or use objective sft for conversations.",
    )
    pairs = [record for record in records if isinstance(record, Preference)]
    outcome = tokenize_preferences(
        tokenizer, pairs, max_length=max_length, on_overlength=on_overlength
    )
    return outcome.examples, outcome.dropped


def dpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Per-pair DPO loss from summed sequence log-probs."""
    margin = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * margin)


def ipo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair IPO loss; log-ratios are averaged per reply token."""
    chosen = (policy_chosen - reference_chosen) / chosen_tokens.clamp(min=1)
    rejected = (policy_rejected - reference_rejected) / rejected_tokens.clamp(min=1)
    return (chosen - rejected - 1 / (2 * beta)) ** 2


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, accurate at both ends (Mächler 2012)."""
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


def orpo_losses(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    *,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """Per-pair ORPO loss: the chosen reply's mean NLL minus β · log σ(log odds ratio)."""
    chosen_mean = policy_chosen / chosen_tokens.clamp(min=1)
    rejected_mean = policy_rejected / rejected_tokens.clamp(min=1)
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    return -chosen_mean - beta * F.logsigmoid(log_odds)


class PairwiseData:
    """How every pairwise objective (dpo, ipo, orpo, reward) reads and batches its data:
    one unit per pair, chosen and rejected side by side in one padded batch. The objectives
    hold one and hand it their `tokenize`, `units` and `collate`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        records: Sequence[Record],
        *,
        max_length: int,
        on_overlength: str,
    ) -> tuple[list[PreferenceExample], list[tuple[str, Source]]]:
        return tokenize_preference_records(
            tokenizer,
            records,
            objective=self.name,
            max_length=max_length,
            on_overlength=on_overlength,
        )

    def units(self, example: PreferenceExample) -> int:
        return 1

    def collate(
        self,
        examples: Sequence[PreferenceExample],
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
    ) -> PairBatch:
        return collate_pairs(examples, pad_token_id=pad_token_id)


class PreferenceOptimization:
    """DPO, IPO or ORPO (``name``) with strength ``beta``; see the module docstring."""

    def __init__(
        self, name: str, *, beta: float = 0.1, reference: ReferenceModel | None = None
    ) -> None:
        if name not in PREFERENCE_LOSSES:
            raise ValueError(f"name must be one of {PREFERENCE_LOSSES}, got {name!r}")
        self.name = name
        self.beta = beta
        self.reference = reference or ReferenceModel()
        self.pair_data = PairwiseData(name)
        self.tokenize = self.pair_data.tokenize
        self.units = self.pair_data.units
        self.collate = self.pair_data.collate

    def loss_sum(self, model: nn.Module, batch: PairBatch) -> tuple[torch.Tensor, int]:
        pairs = batch.pairs
        policy = sequence_logprob_sums(model, batch.sequences)
        tokens = trained_tokens_per_row(batch.sequences)
        chosen_tokens, rejected_tokens = tokens[:pairs], tokens[pairs:]
        if self.name == "orpo":
            losses = orpo_losses(
                policy[:pairs],
                policy[pairs:],
                chosen_tokens=chosen_tokens,
                rejected_tokens=rejected_tokens,
                beta=self.beta,
            )
            return losses.sum(), pairs
        reference = self.reference.run(
            model, lambda frozen: sequence_logprob_sums(frozen, batch.sequences)
        )
        if self.name == "dpo":
            losses = dpo_losses(
                policy[:pairs],
                policy[pairs:],
                reference[:pairs],
                reference[pairs:],
                beta=self.beta,
            )
        else:
            losses = ipo_losses(
                policy[:pairs],
                policy[pairs:],
                reference[:pairs],
                reference[pairs:],
                chosen_tokens=chosen_tokens,
                rejected_tokens=rejected_tokens,
                beta=self.beta,
            )
        return losses.sum(), pairs


def reference_from(models: ModelSource | None) -> ReferenceModel:
    """The frozen base for reference log-probabilities (loaded on first use, if needed)."""
    if models is None:
        return ReferenceModel()
    return ReferenceModel(lambda: models.load(models.base_model))


BETA_HELP = "Preference strength: higher stays closer to the reference."


class DpoSettings(ObjectiveSettings):
    name: Literal["dpo"] = "dpo"
    beta: float = Field(0.1, gt=0, description=BETA_HELP)


class IpoSettings(ObjectiveSettings):
    name: Literal["ipo"] = "ipo"
    beta: float = Field(0.1, gt=0, description=BETA_HELP)


class OrpoSettings(ObjectiveSettings):
    name: Literal["orpo"] = "orpo"
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term vs the NLL.")


def _build(settings: DpoSettings | IpoSettings | OrpoSettings, models: ModelSource | None):
    return PreferenceOptimization(
        settings.name, beta=settings.beta, reference=reference_from(models)
    )


for _settings, _score in (
    (DpoSettings, "log_ratio_sum"),
    (IpoSettings, "log_ratio_per_token"),
    (OrpoSettings, "mean_logprob"),
):
    register(
        Registration(
            _settings.model_fields["name"].default,
            _settings,
            _build,
            verdict="preference",
            shardable=True,
            pair_score=_score,
            openai_method="dpo" if _settings is DpoSettings else None,
        )
    )
