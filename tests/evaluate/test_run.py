"""evaluate_models end to end on a tiny LLaMA with a LoRA adapter: three systems, files written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.evaluate.compare import BASE_FEW_SHOT, BASE_ZERO_SHOT, FINE_TUNED
from tunesmith.evaluate.generate import EvaluationDataError
from tunesmith.evaluate.run import evaluate_models


def _peft(model):
    return get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))


def _classification_items(make_conversation, n: int, offset: int = 0):
    labels = ["positive", "negative"]
    return [
        make_conversation(f"the movie {i} was", labels[i % 2], label=labels[i % 2], line=offset + i)
        for i in range(n)
    ]


def test_classification_run_writes_results_and_report(
    tmp_path: Path, make_tiny_llama, chat_tokenizer, make_conversation
) -> None:
    model = _peft(make_tiny_llama(chat_tokenizer))
    # LoRA B starts at zero, which would make the adapter a no-op and any "base" pass for the
    # base; a non-zero B makes the fine-tuned model differ, so only a real base matches.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    test_items = _classification_items(make_conversation, 8)
    train_items = _classification_items(make_conversation, 6, offset=100)
    result = evaluate_models(
        model,
        chat_tokenizer,
        test_items,
        train_items,
        out_dir=tmp_path / "eval",
        base_disabled_context=model.disable_adapter,
        k_shot=2,
        n_resamples=200,
    )
    assert set(result.outputs) == {BASE_ZERO_SHOT, BASE_FEW_SHOT, FINE_TUNED}
    for outputs in result.outputs.values():
        assert len(outputs) == 8
        assert set(outputs) <= {"positive", "negative"}
    assert result.forgetting is not None
    # The base is the model with the adapter switched off: its perplexity is that of the
    # model without the adapter, and the fine-tuned one's differs.
    with model.disable_adapter():
        base_again = evaluate_models(
            model, chat_tokenizer, test_items, train_items, out_dir=tmp_path / "again",
            base_model=model, k_shot=2, n_resamples=200,
        )  # fmt: skip
    assert result.forgetting.base_perplexity == pytest.approx(
        base_again.forgetting.fine_tuned_perplexity, rel=1e-6
    )
    assert result.outputs[BASE_ZERO_SHOT] == base_again.outputs[FINE_TUNED]
    assert abs(result.forgetting.relative_change) > 1e-3
    saved = json.loads(result.results_path.read_text(encoding="utf-8"))
    assert saved["comparison"]["verdict"] == result.comparison.verdict
    assert saved["settings"]["label_constrained"] == ["negative", "positive"]
    assert len(saved["settings"]["few_shot_examples"]) == 2
    assert result.report_path.name == "report.html" and result.report_path.is_file()


def test_free_text_run_with_a_separate_base_model(
    tmp_path: Path, make_tiny_llama, chat_tokenizer, make_conversation
) -> None:
    test_items = [
        make_conversation(f"what is {i} plus 1", f"#### {i + 1}", line=i) for i in range(4)
    ]
    train_items = [make_conversation("what is 7 plus 1", "#### 8", line=50)]
    result = evaluate_models(
        make_tiny_llama(chat_tokenizer, seed=1),
        chat_tokenizer,
        test_items,
        train_items,
        out_dir=tmp_path,
        base_model=make_tiny_llama(chat_tokenizer, seed=0),
        max_new_tokens=6,
        measure_forgetting=False,
        n_resamples=100,
    )
    assert [row.metric for row in result.comparison.rows] == ["exact_match"]
    assert all(len(outputs) == 4 for outputs in result.outputs.values())
    assert result.forgetting is None


def test_exactly_one_way_to_get_the_base_model(tmp_path, tiny_llama, chat_tokenizer) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        evaluate_models(tiny_llama, chat_tokenizer, [], [], out_dir=tmp_path)
    with pytest.raises(EvaluationDataError, match="no test items"):
        evaluate_models(tiny_llama, chat_tokenizer, [], [], out_dir=tmp_path, base_model=tiny_llama)
