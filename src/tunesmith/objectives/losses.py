"""Token-level loss pieces that every objective shares.

Losses are returned as a *sum* over trained tokens together with the token
count, so the engine can normalise over the tokens of a whole accumulation
window (and across processes) in one place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from tunesmith.data.batching import Batch
from tunesmith.data.tokenize import IGNORE_INDEX

LOGIT_CHUNK_ROWS = 512


def _uses_virtual_tokens(model: nn.Module) -> bool:
    if not isinstance(model, PeftModel):
        return False
    return bool(model.peft_config[model.active_adapter].is_prompt_learning)


def _trunk_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The decoder stack and the LM head of a (possibly peft-wrapped) causal LM."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    base = getattr(base, "module", base)  # DDP
    return base.get_decoder(), base.get_output_embeddings()


def _decoder_states(trunk: nn.Module, batch: Batch) -> torch.Tensor:
    """Final hidden states of the decoder stack, without a cache (a cache would let packed
    examples attend to each other)."""
    return trunk(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.attention_mask,
        use_cache=False,
    ).last_hidden_state


def _chunk_nll_sum(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def selected_hidden_and_targets(
    model: nn.Module, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor, nn.Module] | None:
    """Hidden states at positions whose next token is trained, their targets, and the head.

    Returns None for prompt-learning methods (prefix/prompt tuning), whose virtual
    tokens only exist in the peft wrapper's own forward.
    """
    if _uses_virtual_tokens(model):
        return None
    trunk, head = _trunk_and_head(model)
    hidden = _decoder_states(trunk, batch)
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    return hidden[:, :-1][keep], targets[keep], head


def causal_lm_nll_sum(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over trained tokens, and their count.

    Logits are computed only at trained positions and in chunks that are recomputed
    in the backward pass, so full-vocabulary fp32 logits never exist for the whole
    batch at once.
    """
    selected = selected_hidden_and_targets(model, batch)
    if selected is None:
        return _nll_sum_through_wrapper(model, batch)
    hidden, targets, head = selected
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS):
        rows = slice(start, start + LOGIT_CHUNK_ROWS)
        if torch.is_grad_enabled():
            total = total + checkpoint(
                _chunk_nll_sum, head, hidden[rows], targets[rows], use_reentrant=False
            )
        else:
            total = total + _chunk_nll_sum(head, hidden[rows], targets[rows])
    return total, int(targets.numel())


def _nll_sum_through_wrapper(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    attention_mask = batch.attention_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(batch.input_ids)
    logits = model(input_ids=batch.input_ids, attention_mask=attention_mask).logits
    logits = logits[:, -batch.input_ids.shape[1] :]  # drop virtual-token positions
    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="sum")
    return nll, int(keep.sum())


def _chunk_token_logprobs(
    head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    logits = head(hidden).float()
    return -F.cross_entropy(logits, targets, reduction="none")


def trained_token_logprobs(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) at every trained position (row-major order) and the batch row of each.

    Chunked and recomputed in the backward pass like `causal_lm_nll_sum`, so objectives that
    need per-sequence or per-token log-probs (DPO, ORPO, GRPO) never hold full-vocabulary
    logits for the whole batch.
    """
    keep = batch.labels[:, 1:] != IGNORE_INDEX
    rows = keep.nonzero(as_tuple=True)[0]
    selected = selected_hidden_and_targets(model, batch)
    if selected is None:
        return _token_logprobs_through_wrapper(model, batch, keep), rows
    hidden, targets, head = selected
    pieces = []
    for start in range(0, hidden.shape[0], LOGIT_CHUNK_ROWS):
        chunk = slice(start, start + LOGIT_CHUNK_ROWS)
        if torch.is_grad_enabled():
            pieces.append(
                checkpoint(
                    _chunk_token_logprobs, head, hidden[chunk], targets[chunk], use_reentrant=False
                )
            )
        else:
            pieces.append(_chunk_token_logprobs(head, hidden[chunk], targets[chunk]))
    if not pieces:
        return hidden.new_zeros((0,), dtype=torch.float32), rows
    return torch.cat(pieces), rows


def _token_logprobs_through_wrapper(
    model: nn.Module, batch: Batch, keep: torch.Tensor
) -> torch.Tensor:
    attention_mask = batch.attention_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(batch.input_ids)
    logits = model(input_ids=batch.input_ids, attention_mask=attention_mask).logits
    logits = logits[:, -batch.input_ids.shape[1] :]  # drop virtual-token positions
    targets = batch.labels[:, 1:]
    return -F.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="none")


def sequence_logprob_sums(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Summed log-probability of each row's trained tokens: one value per batch row."""
    logprobs, rows = trained_token_logprobs(model, batch)
    return logprobs.new_zeros(batch.input_ids.shape[0]).index_add(0, rows, logprobs)


def trained_tokens_per_row(batch: Batch) -> torch.Tensor:
    """How many tokens of each row carry loss (labels are shifted by one)."""
    return (batch.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def last_token_hidden_states(model: nn.Module, batch: Batch) -> torch.Tensor | None:
    """The final hidden state at each row's last real token (rows right-padded, with a mask).

    None for prompt-learning methods, whose virtual tokens only exist in the peft wrapper.
    """
    if _uses_virtual_tokens(model) or batch.attention_mask is None:
        return None
    trunk, _head = _trunk_and_head(model)
    hidden = _decoder_states(trunk, batch)
    last = batch.attention_mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
