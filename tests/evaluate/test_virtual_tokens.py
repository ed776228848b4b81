"""Prompt and prefix tuning through every evaluation that reads logits (virtual tokens).

peft's prompt tuning returns logits for its virtual tokens too; before the fix the
forgetting check ended in ``Expected target size [4, 531], got [4, 511]``.
"""

from __future__ import annotations

import pytest
import torch
from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

from tunesmith.data.records import Message
from tunesmith.evaluate.generate import label_log_likelihoods, prompt_token_ids
from tunesmith.evaluate.perplexity import check_forgetting, text_likelihood

TEXT = (
    "the movie was great and the actors were wonderful. a quiet river runs through the old "
    "town at night. what is two plus three? the answer is 5. the film was terrible and boring."
)
VIRTUAL = 5


def _prompt_tuned(model):
    config = PromptTuningConfig(
        num_virtual_tokens=VIRTUAL,
        prompt_tuning_init=PromptTuningInit.RANDOM,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config).eval()


def _prefix_tuned(model):
    return get_peft_model(
        model, PrefixTuningConfig(num_virtual_tokens=VIRTUAL, task_type="CAUSAL_LM")
    ).eval()


def _nll_of(model, ids: list[int]) -> float:
    """Summed NLL of ``ids[1:]`` from one unbatched forward, virtual positions cut by hand."""
    tensor = torch.tensor([ids])
    with torch.no_grad():
        logits = model(input_ids=tensor, attention_mask=torch.ones_like(tensor)).logits[0]
    logits = logits[-len(ids) :].double()
    return torch.nn.functional.cross_entropy(logits[:-1], tensor[0, 1:], reduction="sum").item()


@pytest.mark.parametrize("wrap", [_prompt_tuned, _prefix_tuned], ids=["prompt", "prefix"])
def test_text_likelihood_scores_the_real_tokens_only(make_tiny_llama, chat_tokenizer, wrap):
    model = wrap(make_tiny_llama(chat_tokenizer))
    ids = chat_tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    # Several windows in one padded batch: the case that raised the size mismatch.
    result = text_likelihood(model, chat_tokenizer, TEXT, window=len(ids), batch_size=4)
    assert result.n_tokens == len(ids) - 1
    assert result.total_nll == pytest.approx(_nll_of(model, ids), rel=1e-5)
    windowed = text_likelihood(model, chat_tokenizer, TEXT, window=16, batch_size=4)
    assert windowed.n_tokens == len(ids) - 1


@pytest.mark.parametrize("wrap", [_prompt_tuned, _prefix_tuned], ids=["prompt", "prefix"])
def test_forgetting_check_runs_and_the_disabled_adapter_is_the_base(
    make_tiny_llama, chat_tokenizer, wrap
) -> None:
    plain = make_tiny_llama(chat_tokenizer)
    model = wrap(make_tiny_llama(chat_tokenizer))
    check = check_forgetting(
        model,
        chat_tokenizer,
        base_disabled_context=model.disable_adapter,
        text=TEXT,
        window=32,
        batch_size=4,
    )
    base = text_likelihood(plain, chat_tokenizer, TEXT, window=32, batch_size=4)
    assert check.base_perplexity == pytest.approx(base.perplexity, rel=1e-5)
    assert check.fine_tuned_perplexity != pytest.approx(check.base_perplexity, rel=1e-4)


def test_label_scores_of_a_prompt_tuned_model_match_a_by_hand_forward(
    make_tiny_llama, chat_tokenizer
) -> None:
    model = _prompt_tuned(make_tiny_llama(chat_tokenizer))
    prompts = [(Message("user", "the movie was great"),), (Message("user", "hi"),)]
    labels = ["positive", "negative"]
    scores = label_log_likelihoods(model, chat_tokenizer, prompts, labels, batch_size=3)
    eos = chat_tokenizer.eos_token_id
    for row, prompt in enumerate(prompts):
        prompt_ids = prompt_token_ids(chat_tokenizer, prompt)
        for column, label in enumerate(labels):
            label_ids = chat_tokenizer(label, add_special_tokens=False)["input_ids"] + [eos]
            ids = prompt_ids + label_ids
            full = _nll_of(model, ids)
            context = _nll_of(model, prompt_ids)
            assert scores[row, column].item() == pytest.approx(-(full - context), rel=1e-4)
