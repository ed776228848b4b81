"""Loss masks, packing and the chunked loss: the numerics every method shares."""

import pytest
import torch

from tunesmith.data.batching import collate, epoch_order
from tunesmith.data.records import Conversation, Message, Source, Text
from tunesmith.data.tokenize import (
    IGNORE_INDEX,
    TokenizeError,
    tokenize_conversations,
    tokenize_texts,
    trained_pieces,
)
from tunesmith.objectives.losses import causal_lm_nll_sum


def conversation(line: int, *turns: tuple[str, str], weights: dict[int, int] | None = None):
    weights = weights or {}
    messages = tuple(
        Message(role, content, weights.get(index, 1)) for index, (role, content) in enumerate(turns)
    )
    return Conversation(messages, Source("data.jsonl", line))


@pytest.fixture
def conversations():
    return [
        conversation(1, ("user", "What is two plus two?"), ("assistant", "Four.")),
        conversation(
            2,
            ("system", "Answer with one word."),
            ("user", "capital of France?"),
            ("assistant", "Paris"),
            ("user", "and Italy?"),
            ("assistant", "Rome"),
        ),
        conversation(3, ("user", "hello"), ("assistant", "goodbye thank you")),
    ]


def trained_text(tokenizer, example) -> str:
    return "".join(f"[{text}]" for text, trained in trained_pieces(tokenizer, example) if trained)


def test_only_assistant_turns_carry_loss(tiny_tokenizer, conversations) -> None:
    outcome = tokenize_conversations(tiny_tokenizer, conversations, max_length=256)
    assert [trained_text(tiny_tokenizer, e) for e in outcome.examples] == [
        "[Four.<|im_end|>\n]",
        "[Paris<|im_end|>\n][Rome<|im_end|>\n]",
        "[goodbye thank you<|im_end|>\n]",
    ]


def test_weight_zero_turn_is_context_only(tiny_tokenizer) -> None:
    record = conversation(
        1,
        ("user", "capital of France?"),
        ("assistant", "Rome"),
        ("user", "wrong, again"),
        ("assistant", "Paris"),
        weights={1: 0},
    )
    (example,) = tokenize_conversations(tiny_tokenizer, [record], max_length=256).examples
    assert trained_text(tiny_tokenizer, example) == "[Paris<|im_end|>\n]"


def test_overlength_drop_is_counted_and_error_names_the_line(tiny_tokenizer, conversations):
    outcome = tokenize_conversations(tiny_tokenizer, conversations, max_length=20)
    kept = {e.source.line for e in outcome.examples}
    dropped = {(reason, source.line) for reason, source in outcome.dropped}
    assert kept | {line for _, line in dropped} == {1, 2, 3}
    assert ("over_length", 2) in dropped
    with pytest.raises(TokenizeError, match=r"data\.jsonl:2: \[over_length\]"):
        tokenize_conversations(tiny_tokenizer, conversations, max_length=30, on_overlength="error")


def test_truncate_prompt_keeps_the_final_reply(tiny_tokenizer, conversations) -> None:
    long = conversations[1]
    full = tokenize_conversations(tiny_tokenizer, [long], max_length=256).examples[0]
    outcome = tokenize_conversations(
        tiny_tokenizer, [long], max_length=len(full) - 5, on_overlength="truncate_prompt"
    )
    (example,) = outcome.examples
    assert len(example) <= len(full) - 5
    assert trained_text(tiny_tokenizer, example).endswith("[Rome<|im_end|>\n]")


def test_texts_train_every_token_and_split_long_documents(tiny_tokenizer) -> None:
    text = Text("The capital of France is Paris. " * 20, Source("corpus.txt", 1))
    examples = tokenize_texts(tiny_tokenizer, [text], max_length=32)
    assert len(examples) > 1
    assert all(len(e) <= 32 and e.labels == e.input_ids for e in examples)


def test_packed_loss_equals_per_example_loss(tiny_tokenizer, tiny_model, conversations) -> None:
    examples = tokenize_conversations(tiny_tokenizer, conversations, max_length=256).examples
    pad = tiny_tokenizer.pad_token_id
    packed = collate(examples, pad_token_id=pad, pack=True, row_length=64)
    assert packed.input_ids.shape[0] < len(examples)  # really packed
    packed_sum, packed_count = causal_lm_nll_sum(tiny_model, packed)
    separate_sum, separate_count = 0.0, 0
    for example in examples:
        loss, count = causal_lm_nll_sum(
            tiny_model, collate([example], pad_token_id=pad, pack=False, row_length=64)
        )
        separate_sum += float(loss)
        separate_count += count
    assert packed_count == separate_count
    assert float(packed_sum) / packed_count == pytest.approx(
        separate_sum / separate_count, abs=1e-4
    )


def test_chunked_loss_matches_transformers_labels_loss(tiny_tokenizer, tiny_model, conversations):
    (example, *_) = tokenize_conversations(tiny_tokenizer, conversations, max_length=256).examples
    batch = collate([example], pad_token_id=tiny_tokenizer.pad_token_id, pack=False, row_length=64)
    expected = tiny_model(input_ids=batch.input_ids, labels=batch.labels).loss
    loss_sum, count = causal_lm_nll_sum(tiny_model, batch)
    assert float(loss_sum) / count == pytest.approx(float(expected), abs=1e-5)


def test_padding_is_masked_and_first_label_never_trained(tiny_tokenizer, conversations) -> None:
    examples = tokenize_conversations(tiny_tokenizer, conversations, max_length=256).examples
    batch = collate(examples, pad_token_id=tiny_tokenizer.pad_token_id, pack=False, row_length=0)
    assert batch.attention_mask is not None
    assert torch.all(batch.labels[batch.attention_mask == 0] == IGNORE_INDEX)
    assert torch.all(batch.labels[:, 0] == IGNORE_INDEX)


def test_epoch_order_is_deterministic_and_covers_every_example() -> None:
    lengths = [5, 50, 7, 30, 12, 9, 44, 3, 20, 18]
    first = epoch_order(lengths, batch_size=3, seed=1, epoch=0)
    assert first == epoch_order(lengths, batch_size=3, seed=1, epoch=0)
    assert first != epoch_order(lengths, batch_size=3, seed=1, epoch=1)
    assert sorted(i for batch in first for i in batch) == list(range(len(lengths)))


def test_split_pieces_cover_every_row_within_the_budget(tiny_tokenizer, conversations) -> None:
    examples = tokenize_conversations(tiny_tokenizer, conversations, max_length=256).examples
    batch = collate(examples, pad_token_id=tiny_tokenizer.pad_token_id, pack=False, row_length=0)
    pieces = batch.split(max_tokens=40)
    assert len(pieces) > 1
    assert sum(piece.input_ids.shape[0] for piece in pieces) == batch.input_ids.shape[0]
    assert sum(piece.real_tokens for piece in pieces) == batch.real_tokens
    assert sum(piece.trained_tokens for piece in pieces) == batch.trained_tokens
    for piece in pieces:
        assert piece.input_ids.shape[0] == 1 or piece.input_ids.numel() <= 40
