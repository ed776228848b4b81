"""Classification is detected from the replies of chat data, and scored by the label ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model

from tunesmith.data.records import Conversation, Message, Source
from tunesmith.evaluate.compare import BASE_FEW_SHOT, BASE_ZERO_SHOT, FINE_TUNED
from tunesmith.evaluate.metrics import UnknownMetricError, check_metric_names
from tunesmith.evaluate.run import CLASSIFICATION, GENERATION, evaluate_models
from tunesmith.evaluate.task import as_classification, closed_label_set

SYSTEM = "Classify the sentiment of this review: positive or negative."


def chat(prompt: str, reply: str, line: int) -> Conversation:
    """OpenAI's classification recipe: the label list in the system turn, the label as reply."""
    return Conversation(
        (Message("system", SYSTEM), Message("user", prompt), Message("assistant", reply)),
        Source("chat.jsonl", line),
    )


def sentiment_chats(n: int, offset: int = 0) -> list[Conversation]:
    replies = ["positive", "negative"]
    return [chat(f"the movie {offset + i} was", replies[i % 2], offset + i) for i in range(n)]


def test_a_closed_set_of_replies_is_classification() -> None:
    assert closed_label_set(sentiment_chats(12)) == ["negative", "positive"]
    # A stray reply (under 5% of the data) does not hide the task.
    noisy = [*sentiment_chats(40), chat("odd one", "mixed feelings", 99)]
    assert closed_label_set(noisy) == ["negative", "positive"]


@pytest.mark.parametrize(
    "replies",
    [
        [f"free text answer {i}" for i in range(20)],  # every reply unique
        ["positive"] * 20,  # one answer is not a choice
        ["positive", "negative"] * 2,  # each label seen under three times
        ["positive", "negative"] * 8 + [f"other {i}" for i in range(4)],  # 80% coverage
        [f"label {i % 60}" for i in range(300)],  # 60 labels: more than 50
    ],
    ids=["unique", "one-label", "rare", "low-coverage", "too-many"],
)
def test_other_reply_sets_are_not(replies: list[str]) -> None:
    assert closed_label_set([chat("q", reply, i) for i, reply in enumerate(replies)]) is None


def test_labels_come_from_the_replies_and_given_labels_are_kept() -> None:
    test, train, is_classification = as_classification(sentiment_chats(4), sentiment_chats(9, 10))
    assert is_classification
    assert [item.label for item in test] == ["positive", "negative"] * 2
    assert all(item.label == item.messages[-1].content for item in train)
    free = [chat("q", f"a long answer {i}", i) for i in range(9)]
    assert as_classification(free[:3], free)[2] is False
    labelled = [Conversation(item.messages, item.source, "given") for item in free[:2]]
    assert as_classification(labelled, free)[0] == labelled


def test_chat_classification_is_scored_by_label_likelihood_for_all_three_systems(
    tmp_path: Path, make_tiny_llama, chat_tokenizer
) -> None:
    model = get_peft_model(
        make_tiny_llama(chat_tokenizer), LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    result = evaluate_models(
        model,
        chat_tokenizer,
        sentiment_chats(6),
        sentiment_chats(12, offset=100),
        out_dir=tmp_path,
        base_disabled_context=model.disable_adapter,
        metrics=["accuracy", "macro_f1"],
        k_shot=2,
        measure_forgetting=False,
        n_resamples=100,
    )
    assert result.kind == CLASSIFICATION
    assert [row.metric for row in result.comparison.rows] == ["accuracy", "macro_f1"]
    for system in (BASE_ZERO_SHOT, BASE_FEW_SHOT, FINE_TUNED):
        assert set(result.outputs[system]) <= {"positive", "negative"}
    saved = json.loads(result.results_path.read_text())
    assert saved["kind"] == CLASSIFICATION
    assert saved["settings"]["label_constrained"] == ["negative", "positive"]
    # Unset metrics are chosen from the data: classification metrics again.
    chosen = evaluate_models(
        model,
        chat_tokenizer,
        sentiment_chats(4),
        sentiment_chats(12, offset=100),
        out_dir=tmp_path / "default",
        base_disabled_context=model.disable_adapter,
        measure_forgetting=False,
        n_resamples=50,
    )
    assert [row.metric for row in chosen.comparison.rows] == ["accuracy", "macro_f1"]


def test_accuracy_on_free_text_fails_before_generating_and_names_the_fix(
    tmp_path: Path, tiny_llama, chat_tokenizer
) -> None:
    free = [chat("q", f"a long answer {i}", i) for i in range(6)]
    forwards = []
    hook = tiny_llama.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(UnknownMetricError, match="rouge_l, bleu or exact_match:text"):
        evaluate_models(
            tiny_llama,
            chat_tokenizer,
            free[:2],
            free,
            out_dir=tmp_path,
            base_model=tiny_llama,
            metrics=["accuracy"],
            max_new_tokens=8,
        )
    hook.remove()
    assert forwards == []  # refused before any system answered
    result = evaluate_models(
        tiny_llama,
        chat_tokenizer,
        free[:2],
        free,
        out_dir=tmp_path,
        base_model=tiny_llama,
        max_new_tokens=4,
        measure_forgetting=False,
        n_resamples=50,
    )
    assert result.kind == GENERATION


def test_check_metric_names_says_did_you_mean_and_where_to_fix() -> None:
    check_metric_names(
        ["accuracy", "exact_match:text", "preference_accuracy", "perplexity", "rouge_l"]
    )
    check_metric_names(None)
    with pytest.raises(UnknownMetricError, match=r"did you mean 'accuracy'\?.*eval\.metrics"):
        check_metric_names(["rouge_l", "acuracy"])
    with pytest.raises(UnknownMetricError, match="did you mean 'exact_match:text'"):
        check_metric_names(["exact_match:txt"])
