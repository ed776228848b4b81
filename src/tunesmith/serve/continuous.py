"""Continuous batching for greedy rows: requests join the running batch between decode
steps and leave it when they finish, each step one forward of every row over a KV cache.

The running batch is left-padded like `tunesmith eval`'s batches: a newcomer is prefilled
on its own (with the other newcomers of the same step), then its cache is merged with the
running one by padding the shorter side on the left, masking the padding and taking each
row's positions from its own mask. A finished or abandoned row is dropped from the cache;
columns that became padding for every row are trimmed. Runs that share a base share the
steps: the rows are kept grouped by adapter, and each LoRA layer takes an adapter's rows as
one slice (`tunesmith.serve.grouped_lora`; peft's ``adapter_names`` where that cannot be).

Greedy choice is the argmax of the last logits, as ``generate(do_sample=False)`` makes it;
a module whose generation config asks for logits processing (a repetition penalty, say)
is decoded by ``generate`` instead (``supports``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from tunesmith.evaluate.generate import left_padded
from tunesmith.models.precision import Precision
from tunesmith.serve import grouped_lora
from tunesmith.serve.prefix_cache import PrefixCache

if TYPE_CHECKING:
    from tunesmith.serve.decoding import Job, Row

_PROCESSING = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "min_new_tokens": None,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
}


def supports(module: nn.Module) -> bool:
    """Whether greedy argmax over plain logits is what ``generate`` would do for it."""
    config = getattr(module, "generation_config", None)
    if config is None:
        return True
    return all(
        getattr(config, key, None) in (None, default, 0) for key, default in _PROCESSING.items()
    )


def _pad_left(tensor: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - tensor.shape[-2]
    if missing <= 0:
        return tensor
    shape = (*tensor.shape[:-2], missing, tensor.shape[-1])
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


def _layers(cache: DynamicCache) -> list[DynamicLayer]:
    layers = list(cache.layers)
    if not all(type(layer) is DynamicLayer for layer in layers):
        raise TypeError("continuous batching needs a plain DynamicCache (no sliding window)")
    return layers


def merge_caches(
    running: DynamicCache,
    running_mask: torch.Tensor,
    joining: DynamicCache,
    joining_mask: torch.Tensor,
) -> torch.Tensor:
    """Append ``joining``'s rows to ``running`` in place, left-padding the shorter one; the
    merged attention mask is returned."""
    width = max(running_mask.shape[1], joining_mask.shape[1])
    for ours, theirs in zip(_layers(running), _layers(joining), strict=True):
        ours.keys = torch.cat([_pad_left(ours.keys, width), _pad_left(theirs.keys, width)])
        ours.values = torch.cat([_pad_left(ours.values, width), _pad_left(theirs.values, width)])
    masks = [_pad_left(m.unsqueeze(-1), width).squeeze(-1) for m in (running_mask, joining_mask)]
    return torch.cat(masks)


class RunningBatch:
    """The greedy rows of one module that are decoding now."""

    def __init__(
        self,
        module: nn.Module,
        precision: Precision,
        pad_id: int,
        adapters: bool,
        prefixes: PrefixCache | None = None,
    ):
        self.module = module
        self.prefixes = prefixes if prefixes is not None else PrefixCache()
        self.precision = precision
        self.pad_id = pad_id
        self.adapters = adapters
        self.device = next(module.parameters()).device
        self.rows: list[Row] = []
        self.names: list[str] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)
        self.last = torch.zeros((0,), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.rows)

    def fits(self, job: Job) -> bool:
        return (
            job.module is self.module
            and job.sampling.greedy
            and (job.adapter is not None) == self.adapters
        )

    def _forward(self, names: list[str], **inputs: object) -> tuple[torch.Tensor, DynamicCache]:
        with self.precision.autocast(self.device), self._adapters_of(names, inputs):
            output = self.module(use_cache=True, logits_to_keep=1, **inputs)
        return output.logits[:, -1].float().argmax(dim=-1).cpu(), output.cache

    def _adapters_of(self, names: list[str], inputs: dict[str, object]):
        if not self.adapters:
            return nullcontext()
        if grouped_lora.installed(self.module):
            return grouped_lora.grouped(self.module, grouped_lora.segments_of(names))
        inputs["adapter_names"] = names
        return nullcontext()

    @torch.inference_mode()
    def admit(self, jobs: list[Job]) -> None:
        """Prefill the rows of ``jobs`` together and merge them into the running batch,
        keeping the rows grouped by adapter."""
        pairs = [(job.adapter or "", row) for job in jobs for row in job.rows if not row.cancelled]
        if not pairs:
            return
        pairs.sort(key=lambda pair: pair[0])
        names, rows = [name for name, _ in pairs], [row for _, row in pairs]
        input_ids, mask, cache = self._prefill_inputs(names, rows)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, mask.shape[1] - input_ids.shape[1] :]
        tokens, cache = self._forward(
            names,
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=cache,
        )
        for index in {name: index for index, name in enumerate(names)}.values():
            self.prefixes.remember(
                self.module, names[index], rows[index].prompt_ids, cache, mask, index
            )
        if self.cache is None:
            self.cache, self.mask = cache, mask
        else:
            self.mask = merge_caches(self.cache, self.mask, cache, mask)
        self.rows += rows
        self.names += names
        self.last = torch.cat([self.last, tokens])
        self._group()
        self._accept(tokens.tolist(), rows)

    def _prefill_inputs(
        self, names: list[str], rows: list[Row]
    ) -> tuple[torch.Tensor, torch.Tensor, DynamicCache]:
        """The tokens to prefill, the attention mask over cache and tokens, and the cache:
        each row's kept opening (left-padded to the longest) and the rest of its prompt
        (left-padded too) after it; the padding between them is masked."""
        kept = [
            self.prefixes.lookup(self.module, name, row.prompt_ids)
            for name, row in zip(names, rows, strict=True)
        ]
        lengths = [0 if layers is None else layers[0][0].shape[-2] for layers in kept]
        input_ids, mask = left_padded(
            [row.prompt_ids[length:] for row, length in zip(rows, lengths, strict=True)],
            self.pad_id,
        )
        width = max(lengths)
        if width == 0:
            return input_ids, mask, DynamicCache()
        template = next(layers for layers in kept if layers is not None)
        layers = []
        for index, (keys, values) in enumerate(template):
            per_row = [
                (keys[..., :0, :], values[..., :0, :]) if row is None else row[index]
                for row in kept
            ]
            layers.append(
                (
                    torch.cat([_pad_left(k, width) for k, _ in per_row]),
                    torch.cat([_pad_left(v, width) for _, v in per_row]),
                )
            )
        opening = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], dtype=mask.dtype)
        return input_ids, torch.cat([opening, mask], dim=1), DynamicCache(ddp_cache_data=layers)

    def _group(self) -> None:
        """Reorder the rows (and their cache) so that each adapter's rows are adjacent."""
        order = sorted(range(len(self.names)), key=self.names.__getitem__)
        if order == list(range(len(order))):
            return
        index = torch.tensor(order)
        assert self.cache is not None
        self.cache.batch_select_indices(index.to(self.device))
        self.mask, self.last = self.mask[index], self.last[index]
        self.rows = [self.rows[i] for i in order]
        self.names = [self.names[i] for i in order]

    @torch.inference_mode()
    def step(self) -> None:
        """One token for every row, then finished rows leave."""
        assert self.cache is not None
        self.mask = torch.cat([self.mask, torch.ones((len(self.rows), 1), dtype=torch.long)], 1)
        positions = (self.mask.sum(-1, keepdim=True) - 1).to(self.device)
        tokens, self.cache = self._forward(
            self.names,
            input_ids=self.last.unsqueeze(-1).to(self.device),
            attention_mask=self.mask.to(self.device),
            position_ids=positions,
            cache=self.cache,
        )
        self.last = tokens
        self._accept(tokens.tolist(), self.rows)

    def fail(self, message: str) -> None:
        for row in self.rows:
            if not row.done:
                row.done = True
                row.emit(("error", message))
        self.rows, self.names, self.cache = [], [], None

    def _accept(self, tokens: list[int], rows: list[Row]) -> None:
        for row, token in zip(rows, tokens, strict=True):
            row.accept(token)
        self._drop_finished()

    def _drop_finished(self) -> None:
        for row in self.rows:
            if row.cancelled and not row.done:
                row.done = True
        keep = [i for i, row in enumerate(self.rows) if not row.done]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        self.names = [self.names[i] for i in keep]
        if not keep:
            self.cache, self.mask, self.last = None, self.mask[:0, :0], self.last[:0]
            return
        index = torch.tensor(keep)
        assert self.cache is not None
        self.cache.batch_select_indices(index.to(self.device))
        self.mask, self.last = self.mask[index], self.last[index]
        self._trim()

    def _trim(self) -> None:
        """Drop leading columns that are padding for every remaining row."""
        assert self.cache is not None
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in _layers(self.cache):
            layer.keys = layer.keys[..., start:, :]
            layer.values = layer.values[..., start:, :]
