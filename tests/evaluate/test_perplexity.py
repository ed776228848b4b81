"""Perplexity windows and the forgetting check on a tiny LLaMA with a real LoRA adapter."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.evaluate.perplexity import (
    ForgettingTextError,
    check_forgetting,
    default_forgetting_text_path,
    load_forgetting_text,
    text_likelihood,
)

TEXT = (
    "the movie was great and the actors were wonderful. a quiet river runs through the old "
    "town at night. what is two plus three? the answer is 5. the film was terrible and boring."
)


def _full_sequence_nll(model, tokenizer, text: str) -> float:
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logits = model(ids).logits[0].double()
    return torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum").item()


def test_one_window_equals_a_single_full_pass(tiny_llama, chat_tokenizer) -> None:
    n_ids = len(chat_tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    result = text_likelihood(tiny_llama, chat_tokenizer, TEXT, window=512)
    assert result.n_tokens == n_ids - 1
    assert result.total_nll == pytest.approx(_full_sequence_nll(tiny_llama, chat_tokenizer, TEXT))


@pytest.mark.parametrize(("window", "stride"), [(16, 16), (16, 5), (7, 3), (2, 2)])
def test_windows_score_every_token_once_and_batching_changes_nothing(
    tiny_llama, chat_tokenizer, window: int, stride: int
) -> None:
    n_ids = len(chat_tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    one = text_likelihood(
        tiny_llama, chat_tokenizer, TEXT, window=window, stride=stride, batch_size=1
    )
    many = text_likelihood(
        tiny_llama, chat_tokenizer, TEXT, window=window, stride=stride, batch_size=5
    )
    assert one.n_tokens == many.n_tokens == n_ids - 1
    assert one.total_nll == pytest.approx(many.total_nll, rel=1e-5)
    assert math.isfinite(one.perplexity)


def _lora(model):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    return get_peft_model(model, config)


def _fit_to_text(model, tokenizer, text: str, steps: int = 12):
    """Train the random model briefly on the text, so it has something to forget."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"][:256]).view(2, 128)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def test_perturbed_adapter_is_flagged_and_disabled_adapter_equals_base(
    make_tiny_llama, chat_tokenizer
) -> None:
    text = load_forgetting_text()
    options = {"window": 128, "max_tokens": 512}
    base = _fit_to_text(make_tiny_llama(chat_tokenizer), chat_tokenizer, text)
    base_reference = text_likelihood(base, chat_tokenizer, text, **options)
    assert base_reference.perplexity < 0.5 * len(chat_tokenizer)
    peft_model = _lora(base)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 3.0)
    check = check_forgetting(
        peft_model, chat_tokenizer, base_disabled_context=peft_model.disable_adapter, **options
    )
    assert check.base_perplexity == pytest.approx(base_reference.perplexity, rel=1e-6)
    assert check.fine_tuned_perplexity > check.base_perplexity * 1.1
    assert check.flagged
    assert "forgetting flagged" in check.summary()
    assert check.to_dict()["flagged"] is True


def test_untouched_adapter_is_not_flagged(make_tiny_llama, chat_tokenizer) -> None:
    peft_model = _lora(make_tiny_llama(chat_tokenizer))
    check = check_forgetting(
        peft_model,
        chat_tokenizer,
        base_disabled_context=peft_model.disable_adapter,
        text=TEXT,
        window=32,
    )
    assert check.relative_change == pytest.approx(0.0, abs=1e-6)
    assert not check.flagged


def test_separate_base_model_is_supported(make_tiny_llama, chat_tokenizer) -> None:
    check = check_forgetting(
        make_tiny_llama(chat_tokenizer, seed=1),
        chat_tokenizer,
        base_model=make_tiny_llama(chat_tokenizer, seed=0),
        text=TEXT,
        window=32,
        threshold=10.0,
    )
    assert check.base_perplexity != check.fine_tuned_perplexity
    assert not check.flagged


def test_reference_text_default_override_and_missing(tmp_path: Path) -> None:
    bundled = load_forgetting_text()
    assert default_forgetting_text_path().name == "forgetting_wikitext2.txt"
    assert 25_000 < len(bundled.encode()) < 40_000
    assert bundled.startswith(" = Robert Boulter = ")
    own = tmp_path / "domain.txt"
    own.write_text("my own general text", encoding="utf-8")
    assert load_forgetting_text(own) == "my own general text"
    with pytest.raises(ForgettingTextError, match="not found"):
        load_forgetting_text(tmp_path / "missing.txt")
