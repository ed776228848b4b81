"""Generation and label scoring on a tiny random LLaMA with a real chat tokenizer."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tunesmith.data.records import Conversation, Message, Source
from tunesmith.evaluate.generate import (
    EvaluationDataError,
    choose_few_shot_examples,
    classify_with_labels,
    few_shot_prompt,
    generate_replies,
    label_log_likelihoods,
    prompt_token_ids,
    split_prompt_and_reference,
)

PROMPTS = [
    "the movie was great",
    "a quiet river runs through the old town at night, what is two plus three?",
    "hi",
    "classify the sentiment of this review: the film was terrible",
    "what is two plus three",
]


def _prompts() -> list[tuple[Message, ...]]:
    return [(Message("user", text),) for text in PROMPTS]


@pytest.mark.parametrize("with_adapter", [False, True])
def test_batched_generation_equals_one_by_one(tiny_llama, chat_tokenizer, with_adapter) -> None:
    model = tiny_llama
    if with_adapter:
        model = get_peft_model(tiny_llama, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    prompts = _prompts()
    batched = generate_replies(model, chat_tokenizer, prompts, max_new_tokens=10, batch_size=4)
    single = [
        generate_replies(model, chat_tokenizer, [prompt], max_new_tokens=10, batch_size=1)[0]
        for prompt in prompts
    ]
    assert batched == single
    assert all(isinstance(reply, str) and reply for reply in batched)


def _favour_token(model, token_id: int):
    """Add a large logit to one token, so greedy decoding must pick it every step."""
    bias = torch.zeros(model.config.vocab_size)
    bias[token_id] = 100.0
    return model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias)


def test_generation_stops_at_eos_or_after_max_new_tokens(tiny_llama, chat_tokenizer) -> None:
    word = chat_tokenizer("the", add_special_tokens=False)["input_ids"]
    assert len(word) == 1
    hook = _favour_token(tiny_llama, word[0])
    replies = generate_replies(tiny_llama, chat_tokenizer, _prompts()[:2], max_new_tokens=4)
    hook.remove()
    assert replies == ["thethethethe", "thethethethe"]
    hook = _favour_token(tiny_llama, chat_tokenizer.eos_token_id)
    replies = generate_replies(tiny_llama, chat_tokenizer, _prompts()[:2], max_new_tokens=20)
    hook.remove()
    assert replies == ["", ""]


def test_label_constrained_classification_returns_only_known_labels(
    tiny_llama, chat_tokenizer
) -> None:
    labels = ["positive", "negative", "neutral"]
    answers = classify_with_labels(tiny_llama, chat_tokenizer, _prompts(), labels, batch_size=4)
    assert len(answers) == len(PROMPTS)
    assert set(answers) <= set(labels)


def test_label_classification_picks_the_label_the_model_prefers(tiny_llama, chat_tokenizer) -> None:
    labels = ["positive", "negative"]
    first_token = chat_tokenizer("negative", add_special_tokens=False)["input_ids"][0]
    assert first_token != chat_tokenizer("positive", add_special_tokens=False)["input_ids"][0]
    hook = _favour_token(tiny_llama, first_token)
    answers = classify_with_labels(tiny_llama, chat_tokenizer, _prompts(), labels)
    hook.remove()
    assert answers == ["negative"] * len(PROMPTS)


def test_label_scores_are_the_sequence_log_likelihood(tiny_llama, chat_tokenizer) -> None:
    prompts = _prompts()[:3]
    labels = ["positive", "negative"]
    batched = label_log_likelihoods(tiny_llama, chat_tokenizer, prompts, labels, batch_size=4)
    for row, prompt in enumerate(prompts):
        for column, label in enumerate(labels):
            prompt_ids = prompt_token_ids(chat_tokenizer, prompt)
            label_ids = chat_tokenizer(label, add_special_tokens=False)["input_ids"]
            sequence = torch.tensor([[*prompt_ids, *label_ids, chat_tokenizer.eos_token_id]])
            with torch.no_grad():
                log_probs = torch.log_softmax(tiny_llama(sequence).logits[0].double(), -1)
            expected = sum(
                log_probs[position - 1, sequence[0, position]].item()
                for position in range(len(prompt_ids), sequence.shape[1])
            )
            assert batched[row, column].item() == pytest.approx(expected, abs=1e-4)


def _item(prompt: str, reply: str, label: str | None, line: int) -> Conversation:
    return Conversation(
        (Message("system", "be brief"), Message("user", prompt), Message("assistant", reply)),
        Source("train.jsonl", line),
        label,
    )


def test_few_shot_examples_are_seeded_and_label_balanced() -> None:
    train = [_item(f"p{i}", "pos", "pos", i) for i in range(10)]
    train += [_item(f"n{i}", "neg", "neg", 100 + i) for i in range(2)]
    chosen = choose_few_shot_examples(train, k=4, seed=5)
    assert chosen == choose_few_shot_examples(train, k=4, seed=5)
    assert sorted(item.label for item in chosen) == ["neg", "neg", "pos", "pos"]
    unlabelled = [_item(f"q{i}", "a", None, i) for i in range(10)]
    assert len(choose_few_shot_examples(unlabelled, k=3)) == 3


def test_few_shot_prompt_puts_shots_between_system_and_question() -> None:
    test_prompt = (Message("system", "be brief"), Message("user", "question?"))
    shots = [_item("p1", "a1", None, 1), _item("p2", "a2", None, 2)]
    messages = few_shot_prompt(test_prompt, shots)
    assert [(m.role, m.content) for m in messages] == [
        ("system", "be brief"),
        ("user", "p1"),
        ("assistant", "a1"),
        ("user", "p2"),
        ("assistant", "a2"),
        ("user", "question?"),
    ]


def test_test_item_must_end_with_the_reference_reply() -> None:
    item = Conversation((Message("user", "only a question"),), Source("test.jsonl", 7))
    with pytest.raises(EvaluationDataError, match=r"test\.jsonl:7"):
        split_prompt_and_reference(item)
    prompt, reference = split_prompt_and_reference(_item("q", "the answer", None, 1))
    assert reference == "the answer"
    assert [m.role for m in prompt] == ["system", "user"]
