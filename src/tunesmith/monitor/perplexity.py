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

BATCH_SIZE = 16
MAX_TOKENS = 128


def has_weights(run_dir: Path) -> bool:
    return RunPaths(run_dir).final.is_dir()


def prompt_log_perplexity(
    run_dir: Path,
    texts: Sequence[str],
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Mean token NLL of each text (NaN for texts under two tokens); loads the run's model."""
    trained = load_trained(run_dir)
    tokenizer = trained.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = np.full(len(texts), np.nan, dtype=np.float32)
    with torch.inference_mode(), trained.precision.autocast(trained.device):
        for start in range(0, len(texts), batch_size):
            ids = [
                tokenizer(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]
                for text in texts[start : start + batch_size]
            ]
            out[start : start + len(ids)] = _batch_nll(trained.model, ids, pad_id)
            if on_progress is not None:
                on_progress(start + len(ids))
    return out


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
