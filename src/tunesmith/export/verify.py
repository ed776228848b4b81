"""Proof after writing: the exported file, loaded by llama.cpp, against transformers on the
same weights and the run's own held-out prompts.

Measured per artifact: tokenizer parity (ids and BOS count on the rendered prompts), greedy
parity (identical replies, top-1 agreement and max |Δlogit| along transformers' reply), the
run's task metric on the test prompts, llama.cpp tokens/s and perplexity on general text.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunesmith.data.records import Message
from tunesmith.evaluate.generate import prompt_token_ids
from tunesmith.evaluate.metrics import compute_metric
from tunesmith.export.chat_format import ChatFormat
from tunesmith.export.runtime import LlamaRuntime, load_gguf

PERPLEXITY_WINDOW = 256


@dataclass(frozen=True)
class HeldOut:
    """The run's test prompts with their references, the metric, and general text."""

    prompts: list[tuple[Message, ...]]
    references: list[str]
    metric: str
    general_text: str
    max_new_tokens: int


@dataclass
class Reference:
    """transformers' side, computed once and shared by every exported artifact."""

    prompt_ids: list[list[int]]
    reply_ids: list[list[int]]
    replies: list[str]
    metric: float
    perplexity: float
    stop_ids: list[int]
    windows: list[list[int]]
    """The general text's token windows both runtimes' perplexity is measured on."""
    tokens_per_second: float
    """transformers' greedy decoding speed on the same prompts, one at a time."""


def _decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


@torch.inference_mode()
def _hf_greedy(model: PreTrainedModel, ids: list[int], max_new: int, stop: list[int]) -> list[int]:
    output = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new,
        do_sample=False,
        eos_token_id=stop,
        pad_token_id=stop[0],
    )
    new = output[0, len(ids) :].tolist()
    return new[: next((i for i, t in enumerate(new) if t in stop), len(new))]


@torch.inference_mode()
def _hf_logits(model: PreTrainedModel, ids: Sequence[int]) -> np.ndarray:
    return model(input_ids=torch.tensor([list(ids)])).logits[0].float().numpy()


def _windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[at : at + size] for at in range(0, len(ids) - 1, size) if len(ids[at:]) > 1]


def _perplexity(logits_of: Any, windows: list[list[int]]) -> float:
    total, count = 0.0, 0
    for window in windows:
        logits = logits_of(window)[:-1].astype(np.float64)
        targets = np.array(window[1:])
        top = logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        total += float((log_norm - logits[np.arange(len(targets)), targets]).sum())
        count += len(targets)
    return math.exp(total / max(count, 1))


def reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chat: ChatFormat,
    held_out: HeldOut,
) -> Reference:
    stop = list(chat.end_of_turn_ids)
    prompt_ids = [prompt_token_ids(tokenizer, p) for p in held_out.prompts]
    started = time.perf_counter()
    reply_ids = [_hf_greedy(model, ids, held_out.max_new_tokens, stop) for ids in prompt_ids]
    seconds = time.perf_counter() - started
    replies = [_decode(tokenizer, ids) for ids in reply_ids]
    text_ids = tokenizer(held_out.general_text, add_special_tokens=False).input_ids
    windows = _windows(text_ids, PERPLEXITY_WINDOW)[:4]
    return Reference(
        prompt_ids=prompt_ids,
        reply_ids=reply_ids,
        replies=replies,
        metric=compute_metric(held_out.metric, replies, held_out.references).value,
        perplexity=_perplexity(lambda w: _hf_logits(model, w), windows),
        stop_ids=stop,
        windows=windows,
        tokens_per_second=sum(map(len, reply_ids)) / seconds if seconds else 0.0,
    )


@dataclass
class Verification:
    tokenizer_identical: int
    prompts: int
    bos_count_transformers: int
    bos_count_llama_cpp: int
    replies_identical: int
    top1_agreement: float
    max_abs_logit_delta: float
    metric: str
    metric_llama_cpp: float
    metric_transformers: float
    perplexity_llama_cpp: float
    perplexity_transformers: float
    tokens_per_second: float
    transformers_tokens_per_second: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def identical_share(self) -> float:
        return self.replies_identical / max(self.prompts, 1)


def verify(
    gguf_path: Path,
    tokenizer: PreTrainedTokenizerBase,
    chat: ChatFormat,
    add_bos: bool,
    held_out: HeldOut,
    ref: Reference,
    model: PreTrainedModel,
    *,
    lora: Path | None = None,
) -> Verification:
    with load_gguf(
        gguf_path, lora=lora, n_ctx=min(1024, model.config.max_position_embeddings)
    ) as runtime:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in p],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in held_out.prompts
        ]
        llama_ids = [runtime.tokenize(text, add_bos=add_bos) for text in texts]
        return _measure(runtime, tokenizer, llama_ids, held_out, ref, model)


def _measure(
    runtime: LlamaRuntime,
    tokenizer: PreTrainedTokenizerBase,
    llama_ids: list[list[int]],
    held_out: HeldOut,
    ref: Reference,
    model: PreTrainedModel,
) -> Verification:
    bos = tokenizer.bos_token_id
    replies, tokens, seconds = [], 0, 0.0
    for ids in llama_ids:
        out, spent = runtime.greedy_timed(ids, held_out.max_new_tokens, ref.stop_ids)
        replies.append(_decode(tokenizer, out))
        tokens, seconds = tokens + len(out), seconds + spent
    agree, positions, delta = 0, 0, 0.0
    for prompt, reply in zip(ref.prompt_ids, ref.reply_ids, strict=True):
        # Every reply token's prediction and the one that ends the reply (its stop token).
        sequence = prompt + reply
        ours = runtime.logits(sequence)[len(prompt) - 1 :]
        theirs = _hf_logits(model, sequence)[len(prompt) - 1 :]
        agree += int((ours.argmax(axis=1) == theirs.argmax(axis=1)).sum())
        positions += len(ours)
        delta = max(delta, float(np.abs(ours - theirs).max()))
    return Verification(
        tokenizer_identical=sum(a == b for a, b in zip(llama_ids, ref.prompt_ids, strict=True)),
        prompts=len(llama_ids),
        bos_count_transformers=sum(ids.count(bos) for ids in ref.prompt_ids[:1]) if bos else 0,
        bos_count_llama_cpp=sum(ids.count(bos) for ids in llama_ids[:1]) if bos else 0,
        replies_identical=sum(a == b for a, b in zip(replies, ref.replies, strict=True)),
        top1_agreement=agree / max(positions, 1),
        max_abs_logit_delta=delta,
        metric=held_out.metric,
        metric_llama_cpp=compute_metric(held_out.metric, replies, held_out.references).value,
        metric_transformers=ref.metric,
        perplexity_llama_cpp=_perplexity(runtime.logits, ref.windows),
        perplexity_transformers=ref.perplexity,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        transformers_tokens_per_second=ref.tokens_per_second,
    )
