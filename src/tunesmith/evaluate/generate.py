"""Turn test conversations into model answers: prompts, few-shot shots, decoding.

Every system under comparison (base zero-shot, base few-shot, fine-tuned) goes through
the same functions here with the same decoding, so a difference in scores comes from
the model and the prompt, never from the harness.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.data.records import Conversation, Message
from tunesmith.errors import TunesmithError
from tunesmith.evaluate.logits import input_aligned_logits
from tunesmith.models.packed_linear import packed_linears


class EvaluationDataError(TunesmithError, ValueError):
    """A test or few-shot item that cannot be evaluated; the message names file:line and the fix."""


def split_prompt_and_reference(item: Conversation) -> tuple[tuple[Message, ...], str]:
    """The prompt is every turn before the last; the last turn is the reference assistant reply."""
    if len(item.messages) < 2 or item.messages[-1].role != "assistant":
        raise EvaluationDataError(
            f"{item.source}: a test item must end with the reference assistant reply after at "
            f"least one prompt turn; this one ends with a {item.messages[-1].role!r} turn "
            f"and has {len(item.messages)} turn(s). Add the expected answer as the last turn."
        )
    return item.messages[:-1], item.messages[-1].content


def choose_few_shot_examples(
    train_items: Sequence[Conversation], k: int = 3, seed: int = 0
) -> list[Conversation]:
    """Pick ``k`` training conversations as demonstrations, reproducibly.

    With labels, shots go round-robin over the labels (in sorted order, shuffled within each
    label) so no class dominates the prompt; without labels it is a seeded random choice.
    """
    usable = [
        item for item in train_items if item.messages and item.messages[-1].role == "assistant"
    ]
    if k <= 0 or not usable:
        return []
    rng = random.Random(seed)
    if not all(item.label is not None for item in usable):
        return rng.sample(usable, min(k, len(usable)))
    by_label: dict[str, list[Conversation]] = defaultdict(list)
    for item in usable:
        by_label[str(item.label)].append(item)
    for items in by_label.values():
        rng.shuffle(items)
    chosen: list[Conversation] = []
    queues = [by_label[label] for label in sorted(by_label)]
    while len(chosen) < k and any(queues):
        for queue in queues:
            if queue and len(chosen) < k:
                chosen.append(queue.pop())
    rng.shuffle(chosen)
    return chosen


def few_shot_prompt(
    prompt: Sequence[Message], examples: Sequence[Conversation]
) -> tuple[Message, ...]:
    """The test prompt with the examples inserted as earlier user/assistant turns.

    System turns of the test prompt stay first; the examples' own system turns are dropped so
    the model sees one instruction, then the demonstrations, then the question.
    """
    system = [message for message in prompt if message.role == "system"]
    rest = [message for message in prompt if message.role != "system"]
    shots = [
        message for example in examples for message in example.messages if message.role != "system"
    ]
    return (*system, *shots, *rest)


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Message]) -> list[int]:
    """Token ids of a chat prompt through the tokenizer's own template, ready for the reply."""
    chat = [{"role": message.role, "content": message.content} for message in prompt]
    encoded = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)
    return list(encoded["input_ids"])


def _stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """eos of the tokenizer plus the model's generation eos: chat models often differ here."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for candidate in (tokenizer.eos_token_id, configured):
        if candidate is None:
            continue
        for token_id in candidate if isinstance(candidate, list) else [candidate]:
            if token_id not in ids:
                ids.append(token_id)
    if not ids:
        raise EvaluationDataError(
            "the tokenizer has no eos token, so generation could not stop at the end of a "
            "reply; set eos_token in tokenizer_config.json"
        )
    return ids


def _batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length, so left padding wastes little compute."""
    order = sorted(range(len(lengths)), key=lambda index: lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def left_padded(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned with their attention mask: how evaluation, and so serving, batch."""
    width = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, width - len(sequence) :] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, width - len(sequence) :] = 1
    return input_ids, attention_mask


def _pad_id(tokenizer: PreTrainedTokenizerBase, stop_ids: list[int]) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


@torch.inference_mode()
def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
) -> list[str]:
    """Greedy replies to chat prompts, batched with left padding, in the order of ``prompts``.

    Greedy decoding makes the comparison deterministic; generation stops at eos (or after
    ``max_new_tokens``) and the returned text has special tokens removed.
    """
    model.eval()
    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, stop_ids)
    encoded = [prompt_token_ids(tokenizer, prompt) for prompt in prompts]
    replies = [""] * len(encoded)
    device = model.device
    with packed_linears(model):  # the server's kernels: served = evaluated
        for batch in _batches_by_length([len(ids) for ids in encoded], batch_size):
            input_ids, attention_mask = left_padded([encoded[index] for index in batch], pad_id)
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=pad_id,
            )
            new_tokens = output[:, input_ids.shape[1] :].cpu()
            for row, index in enumerate(batch):
                tokens = new_tokens[row].tolist()
                stops = (at for at, token in enumerate(tokens) if token in stop_ids)
                end = next(stops, len(tokens))
                replies[index] = tokenizer.decode(tokens[:end], skip_special_tokens=True).strip()
    return replies


@torch.inference_mode()
def label_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str],
    *,
    batch_size: int = 8,
) -> torch.Tensor:
    """log p(label + eos | prompt) for every prompt and label: shape ``(prompts, labels)``.

    Scoring the closing eos too means "positive" is the whole reply, not the start of
    "positive but ...". Sequences are right-padded: no generation, so padding side only
    needs the attention mask.
    """
    model.eval()
    stop_ids = _stop_token_ids(model, tokenizer)
    pad_id = _pad_id(tokenizer, stop_ids)
    label_ids = [
        tokenizer(label, add_special_tokens=False)["input_ids"] + [stop_ids[0]] for label in labels
    ]
    pairs = [
        (prompt_index, label_index, prompt_token_ids(tokenizer, prompt))
        for prompt_index, prompt in enumerate(prompts)
        for label_index in range(len(labels))
    ]
    scores = torch.zeros((len(prompts), len(labels)), dtype=torch.float64)
    lengths = [len(prompt_ids) + len(label_ids[label]) for _, label, prompt_ids in pairs]
    for batch in _batches_by_length(lengths, batch_size):
        width = max(lengths[index] for index in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        target_mask = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, index in enumerate(batch):
            _, label, prompt_ids = pairs[index]
            sequence = prompt_ids + label_ids[label]
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
            target_mask[row, len(prompt_ids) : len(sequence)] = True
        logits = input_aligned_logits(model, input_ids, attention_mask)
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1).cpu()
        token_log_probs = log_probs.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        summed = (token_log_probs * target_mask[:, 1:]).sum(dim=1).double()
        for row, index in enumerate(batch):
            prompt_index, label, _ = pairs[index]
            scores[prompt_index, label] = summed[row]
    return scores


def classify_with_labels(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[Message]],
    labels: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[str]:
    """The most likely label for each prompt: answers are always from the known label set."""
    if not labels:
        raise EvaluationDataError(
            "label-constrained classification needs at least one label: give text + label "
            "data, or chat data whose final assistant replies are the labels"
        )
    scores = label_log_likelihoods(model, tokenizer, prompts, labels, batch_size=batch_size)
    return [labels[int(best)] for best in scores.argmax(dim=1)]
