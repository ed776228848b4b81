"""Keys and values of a prompt's opening tokens, kept to prefill the next prompt that opens
the same way.

A chat template opens every prompt of one model alike: the system prompt and the role
markers, 24 of the 36-40 tokens of a short request with SmolLM2's template. A request's
prefill takes about as many token forwards as its whole share of the decode steps (37
against 32 in `benchmarks/serve.py`), so prefilling that opening once per adapter instead
of once per request saves about a third of a short request's compute. Only the tokens
before the first difference are reused: a causal model's key and value at a position
depend on the tokens up to it and nothing after, so the reused states are the ones a full
prefill would compute (up to the rounding of a different batch shape, as any batch has).

One prompt is kept per module and adapter, the last one prefilled, so the kept opening
follows what requests look like now. The decoder clears everything before it loads or
unloads a run: an adapter may come back under its old name with new weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache

MIN_SHARED_TOKENS = 8
"""Below this, reusing saves less than the gathering and padding cost."""

KeyValues = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, keys and values shaped [1, heads, tokens, head_dim]."""


@dataclass
class _Prompt:
    ids: list[int]
    layers: KeyValues


def _shared_length(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return length


class PrefixCache:
    def __init__(self) -> None:
        self._prompts: dict[tuple[int, str], _Prompt] = {}

    def clear(self) -> None:
        self._prompts.clear()

    def lookup(self, module: nn.Module, adapter: str, prompt: list[int]) -> KeyValues | None:
        """The kept states of ``prompt``'s opening tokens, or None when too few are shared.
        At least the last prompt token is left to prefill: its logits give the first token."""
        kept = self._prompts.get((id(module), adapter))
        if kept is None:
            return None
        shared = min(_shared_length(kept.ids, prompt), len(prompt) - 1)
        if shared < MIN_SHARED_TOKENS:
            return None
        return [(keys[..., :shared, :], values[..., :shared, :]) for keys, values in kept.layers]

    def remember(
        self,
        module: nn.Module,
        adapter: str,
        prompt: list[int],
        cache: DynamicCache,
        mask: torch.Tensor,
        row: int,
    ) -> None:
        """Keep row ``row`` of a prefilled cache (its unmasked columns) as ``prompt``'s."""
        columns = mask[row].nonzero().squeeze(-1).to(cache.layers[0].keys.device)
        layers = [
            (
                layer.keys[row : row + 1].index_select(-2, columns),
                layer.values[row : row + 1].index_select(-2, columns),
            )
            for layer in cache.layers
        ]
        self._prompts[(id(module), adapter)] = _Prompt(list(prompt), layers)
