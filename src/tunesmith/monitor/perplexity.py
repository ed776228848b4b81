"""The fine-tuned model's own view of an input: how surprised it is by the prompt.

Each prompt's mean token negative log-likelihood (log-perplexity) under the run's
fine-tuned model, on the prompt's plain text (the same rendering for live and
validation prompts, so the comparison is fair even though serving wraps prompts in the
chat template). The reference is the run's validation prompts, which the model never
trained on: training prompts would look familiar for having been seen. A window of
prompts the model finds much more surprising than those lies "outside what it learned".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from tunesmith.evaluate.logits import input_aligned_logits
from tunesmith.runs import RunPaths, load_trained

TOKENS_PER_BATCH = 256
"""Padded tokens per forward pass: bounds the fp32 logits (tokens × vocabulary: 50 MB for
SmolLM2's 49k vocabulary, twice that while the loss is taken) while letting short
requests share batches (larger budgets scored no faster on a 2-core CPU)."""
MAX_TOKENS = 128
CHUNK = 4096
"""Texts tokenized and length-sorted together (as the encoder does)."""


def has_weights(run_dir: Path) -> bool:
    return RunPaths(run_dir).final.is_dir()


def prompt_log_perplexity(
    run_dir: Path,
    texts: Sequence[str],
    *,
    tokens_per_batch: int = TOKENS_PER_BATCH,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Mean token NLL of each text (NaN for texts under two tokens); loads the run's model.

    Batches are cut from length-sorted texts, so a batch pads only to its own longest
    prompt: a mix of short requests and long messages no longer pays for the longest.
    """
    trained = load_trained(run_dir)
    tokenizer = trained.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.full(len(texts), np.nan, dtype=np.float32)
    done = 0
    with torch.inference_mode(), trained.precision.autocast(trained.device):
        for start in range(0, len(texts), CHUNK):
            chunk = list(texts[start : start + CHUNK])
            ids = [
                row[:MAX_TOKENS] for row in tokenizer(chunk, add_special_tokens=False)["input_ids"]
            ]
            for rows in length_batches([len(row) for row in ids], tokens_per_batch):
                out[start + rows] = _batch_nll(trained.model, [ids[i] for i in rows], pad_id)
                done += len(rows)
                if on_progress is not None:
                    on_progress(done)
    return out


def length_batches(lengths: Sequence[int], tokens_per_batch: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length, each at most ``tokens_per_batch``
    padded tokens (a single longer text still gets a batch of its own)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches: list[np.ndarray] = []
    first = 0
    for end in range(1, len(order) + 1):
        longest = max(2, lengths[order[end - 1]])
        if end - first > 1 and (end - first) * longest > tokens_per_batch:
            batches.append(order[first : end - 1])
            first = end - 1
    if first < len(order):
        batches.append(order[first:])
    return batches


def _batch_nll(model: torch.nn.Module, ids: list[list[int]], pad_id: int) -> np.ndarray:
    width = max(2, max(len(row) for row in ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = 1
    logits = input_aligned_logits(model, input_ids, mask).cpu()
    nll = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), input_ids[:, 1:], reduction="none"
    )
    scored = mask[:, 1:].bool()
    counts = scored.sum(1)
    means = (nll * scored).sum(1) / counts.clamp(min=1)
    return torch.where(counts > 0, means, torch.nan).numpy()
