"""Policy optimisation against a reward model, GRPO-style (Shao et al. 2024).

Each training step samples ``group_size`` completions per prompt from the
current policy, scores every prompt+completion with the reward model, and
normalises the scores within each prompt's group into advantages
``(r − mean) / (std + 1e-4)``. The loss per completion token is the clipped
policy-gradient surrogate minus ``beta`` times the k3 estimate of
KL(policy ‖ reference), averaged over the completion's tokens, then over the
group; one prompt is one unit. The reference is the model with its adapter
disabled (or a frozen base copy; see `reference.py`).

Each batch of samples is used for exactly one gradient step, so the "old"
policy of the ratio is the current one detached: the ratio is 1 in value, the
clip never binds, and the gradient is the plain advantage-weighted
log-likelihood gradient (as in TRL's GRPO with one iteration per generation).

Under ``torch.no_grad()`` (validation) the surrogate is ~0 by construction, so
`loss_sum` returns the negative mean reward of the sampled completions instead:
validation loss falls as the policy earns more reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from tunesmith.data.batching import Batch, collate
from tunesmith.data.records import Conversation, Preference, Record, Source
from tunesmith.data.tokenize import IGNORE_INDEX, TokenizedExample, TokenizeError
from tunesmith.data.validate import Problem
from tunesmith.objectives.errors import ObjectiveError
from tunesmith.objectives.losses import trained_token_logprobs, trained_tokens_per_row
from tunesmith.objectives.preference import reference_from
from tunesmith.objectives.record_kinds import require_record_kinds
from tunesmith.objectives.reference import ReferenceModel
from tunesmith.objectives.registry import ModelSource, ObjectiveSettings, Registration, register
from tunesmith.objectives.reward import load_reward_model

RewardFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(input_ids, attention_mask) of right-padded prompt+completion rows → one score per row."""

ADVANTAGE_EPSILON = 1e-4


@dataclass(frozen=True)
class PromptExample:
    """A rendered prompt ending with the assistant's turn header, and the token that ends a
    reply."""

    input_ids: list[int]
    stop_token_id: int
    source: Source

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class PromptBatch:
    """Prompts left-padded (so generation continues every row at the same column)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pad_token_id: int
    stop_token_id: int
    sources: list[Source]

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device) -> PromptBatch:
        return PromptBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.pad_token_id,
            self.stop_token_id,
            self.sources,
        )


def prompt_messages(record: Conversation | Preference) -> list[dict[str, str]]:
    """What the policy answers: a pair's prompt, or a conversation without its final reply."""
    messages = record.prompt if isinstance(record, Preference) else record.messages
    if messages and messages[-1].role == "assistant":
        messages = messages[:-1]
    return [{"role": m.role, "content": m.content} for m in messages]


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards of shape (prompts, group_size) standardised within each prompt's group."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + ADVANTAGE_EPSILON)


def grpo_token_losses(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_range: float,
    beta: float,
) -> torch.Tensor:
    """Per-token loss: −(clipped surrogate − β · k3 KL estimate to the reference)."""
    ratio = torch.exp(logprobs - old_logprobs)
    clipped = torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages)
    to_reference = reference_logprobs - logprobs
    kl = torch.exp(to_reference) - to_reference - 1
    return -(surrogate - beta * kl)


def sample_completions(
    model: nn.Module, batch: PromptBatch, *, group_size: int, max_new_tokens: int
) -> Batch:
    """``group_size`` sampled completions per prompt (rows of a group are adjacent), as a
    right-padded batch whose labels are the completion tokens up to and including the stop
    token. Sampling is plain (temperature 1, no top-k/top-p): the samples come from the very
    distribution whose log-probs the loss uses."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            generated = model.generate(
                input_ids=batch.input_ids.repeat_interleave(group_size, dim=0),
                attention_mask=batch.attention_mask.repeat_interleave(group_size, dim=0),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                pad_token_id=batch.pad_token_id,
                eos_token_id=batch.stop_token_id,
            )
    finally:
        model.train(was_training)
    width = batch.input_ids.shape[1]
    rows = []
    for row in range(generated.shape[0]):
        prompt_row = row // group_size
        prompt = batch.input_ids[prompt_row][batch.attention_mask[prompt_row].bool()].tolist()
        completion = generated[row, width:].tolist()
        if batch.stop_token_id in completion:
            completion = completion[: completion.index(batch.stop_token_id) + 1]
        rows.append(
            TokenizedExample(
                prompt + completion,
                [IGNORE_INDEX] * len(prompt) + completion,
                batch.sources[prompt_row],
            )
        )
    completions = collate(rows, pad_token_id=batch.pad_token_id, pack=False, row_length=0)
    return completions.to(batch.input_ids.device)


class GroupRelativePolicyOptimization:
    """The `rlhf` objective; ``reward`` scores prompt+completion rows (see `RewardFunction`).

    Without a reward (the registered instance) it tokenizes and collates prompts, and
    computing a loss says how to give it a reward model.
    """

    name = "rlhf"

    def __init__(
        self,
        reward: RewardFunction | None = None,
        *,
        reference: ReferenceModel | None = None,
        beta: float = 0.1,
        group_size: int = 4,
        max_new_tokens: int = 32,
        clip_range: float = 0.2,
    ) -> None:
        self.reward = reward
        self.reference = reference or ReferenceModel()
        self.beta = beta
        self.group_size = group_size
        self.max_new_tokens = max_new_tokens
        self.clip_range = clip_range

    def tokenize(
        self,
        tokenizer: PreTrainedTokenizerBase,
        records: Sequence[Record],
        *,
        max_length: int,
        on_overlength: str,
    ) -> tuple[list[PromptExample], list[tuple[str, Source]]]:
        """Prompts of conversations or preference pairs. ``max_length`` bounds the prompt (a
        sampled sequence is at most ``max_length + max_new_tokens`` tokens); a longer prompt is
        dropped (``on_overlength`` drop or truncate_prompt) or listed in the error (``error``).
        The result depends only on the arguments, so the tokenized-data cache may keep it."""
        require_record_kinds(
            records,
            (Conversation, Preference),
            objective=self.name,
            expected="prompts (conversations or preference pairs)",
            fix="Give conversations or preference pairs; their prompts are what the policy "
            "answers.",
        )
        if tokenizer.eos_token_id is None:
            raise ObjectiveError(
                "objective rlhf needs a tokenizer with an end-of-sequence token to end replies."
            )
        examples: list[PromptExample] = []
        dropped: list[tuple[str, Source]] = []
        problems: list[Problem] = []
        for record in records:
            assert isinstance(record, Conversation | Preference)
            try:
                text = tokenizer.apply_chat_template(
                    prompt_messages(record), tokenize=False, add_generation_prompt=True
                )
            except Exception as error:  # the template raised: report it against the record
                problems.append(
                    Problem(
                        "template_render_failed",
                        record.source.file,
                        record.source.line,
                        None,
                        f"chat template error: {error}".rstrip(".") + ".",
                        "Make the prompt fit the model's chat template.",
                    )
                )
                continue
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > max_length:
                if on_overlength == "error":
                    problems.append(
                        Problem(
                            "over_length",
                            record.source.file,
                            record.source.line,
                            None,
                            f"prompt of {len(ids)} tokens, more than data.max_length={max_length}.",
                            "Raise data.max_length, shorten the prompt, or set "
                            "data.on_overlength to drop.",
                        )
                    )
                else:
                    dropped.append(("over_length", record.source))
                continue
            examples.append(PromptExample(ids, tokenizer.eos_token_id, record.source))
        if problems:
            raise TokenizeError(problems)
        return examples, dropped

    def units(self, example: PromptExample) -> int:
        return 1

    def collate(
        self,
        examples: Sequence[PromptExample],
        *,
        pad_token_id: int,
        pack: bool,
        row_length: int,
    ) -> PromptBatch:
        width = max(len(example) for example in examples)
        input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
        for row, example in enumerate(examples):
            input_ids[row, width - len(example) :] = torch.tensor(example.input_ids)
            attention_mask[row, width - len(example) :] = 1
        return PromptBatch(
            input_ids,
            attention_mask,
            pad_token_id,
            examples[0].stop_token_id,
            [example.source for example in examples],
        )

    def loss_sum(self, model: nn.Module, batch: PromptBatch) -> tuple[torch.Tensor, int]:
        if self.reward is None:
            raise ObjectiveError(
                "objective rlhf has no reward model: set objective.reward_model and build the "
                "objective with tunesmith.objectives.build_objective(...)."
            )
        prompts = len(batch.sources)
        completions = sample_completions(
            model, batch, group_size=self.group_size, max_new_tokens=self.max_new_tokens
        )
        with torch.no_grad():
            rewards = self.reward(completions.input_ids, completions.attention_mask)
        rewards = rewards.float().view(prompts, self.group_size)
        if not torch.is_grad_enabled():
            return -rewards.mean(dim=1).sum(), prompts
        advantages = group_advantages(rewards).flatten()
        logprobs, rows = trained_token_logprobs(model, completions)
        reference, _rows = self.reference.run(
            model, lambda frozen: trained_token_logprobs(frozen, completions)
        )
        per_token = grpo_token_losses(
            logprobs,
            logprobs.detach(),
            reference,
            advantages[rows],
            clip_range=self.clip_range,
            beta=self.beta,
        )
        per_completion = per_token.new_zeros(advantages.shape[0]).index_add(0, rows, per_token)
        per_completion = per_completion / trained_tokens_per_row(completions).clamp(min=1)
        return per_completion.view(prompts, self.group_size).mean(dim=1).sum(), prompts


class RlhfSettings(ObjectiveSettings):
    name: Literal["rlhf"] = "rlhf"
    reward_model: Path | None = Field(
        None, description="Run directory of a finished `objective: reward` run."
    )
    beta: float = Field(0.1, gt=0, description="Weight of the KL penalty to the reference.")
    group_size: int = Field(
        4, ge=2, description="Completions sampled per prompt (advantages are group-relative)."
    )
    max_new_tokens: int = Field(32, ge=1, description="Longest sampled completion, in tokens.")
    clip_range: float = Field(0.2, gt=0, lt=1, description="Policy-ratio clipping epsilon.")


def _build(settings: RlhfSettings, models: ModelSource | None) -> GroupRelativePolicyOptimization:
    options = {
        "beta": settings.beta,
        "group_size": settings.group_size,
        "max_new_tokens": settings.max_new_tokens,
        "clip_range": settings.clip_range,
    }
    if models is None:
        return GroupRelativePolicyOptimization(**options)
    if settings.reward_model is None:
        raise ObjectiveError(
            "objective rlhf needs objective.reward_model: the run directory of a finished "
            "run with objective reward."
        )
    return GroupRelativePolicyOptimization(
        load_reward_model(settings.reward_model, models.load),
        reference=reference_from(models),
        **options,
    )


register(
    Registration(
        "rlhf",
        RlhfSettings,
        _build,
        verdict="preference",
        shardable=False,
        pair_score="mean_logprob",
    )
)
