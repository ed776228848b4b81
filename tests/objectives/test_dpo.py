"""DPO, IPO and ORPO: parity with TRL's losses, exact accumulation, and training that works."""

from __future__ import annotations

import copy
import os
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import build_tiny_model
from tests.objectives.helpers import PAIRS, lora_model, preference_records, train
from tunesmith.data.preference import tokenize_preferences
from tunesmith.engine.batches import BatchSettings
from tunesmith.engine.loop import backward_window
from tunesmith.objectives import ObjectiveError, build_objective, get_objective, objective_settings
from tunesmith.objectives.losses import sequence_logprob_sums, trained_tokens_per_row
from tunesmith.objectives.preference import (
    PreferenceOptimization,
    collate_pairs,
    dpo_losses,
    ipo_losses,
    orpo_losses,
)
from tunesmith.objectives.reference import ReferenceModel

PAD = 3
CPU = torch.device("cpu")


def pair_batch(tokenizer, count: int = len(PAIRS)):
    examples = tokenize_preferences(tokenizer, preference_records(), max_length=128).examples
    return examples[:count], collate_pairs(examples[:count], pad_token_id=PAD)


def trl_batch_and_loss(model, reference, tokenizer, loss_type: str, tmp_path):
    """TRL's own DPOTrainer on the same pairs, with reference log-probs precomputed by TRL."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    rows = [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for prompt, chosen, rejected in PAIRS
    ]
    args = DPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        beta=0.1,
        loss_type=[loss_type],
        per_device_train_batch_size=len(rows),
        precompute_ref_log_probs=True,
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))])
    return batch, trainer._compute_loss(trainer.model, batch, return_outputs=False)


@pytest.mark.parametrize("loss_type", ["dpo", "ipo"])
def test_loss_matches_trl_on_the_same_batch_and_reference_log_probs(
    tiny_tokenizer, tmp_path, loss_type
) -> None:
    policy = build_tiny_model(len(tiny_tokenizer), seed=0)
    reference = build_tiny_model(len(tiny_tokenizer), seed=1)
    ours_policy, ours_reference = copy.deepcopy(policy), copy.deepcopy(reference)
    trl_inputs, trl_loss = trl_batch_and_loss(
        policy, reference, tiny_tokenizer, "sigmoid" if loss_type == "dpo" else "ipo", tmp_path
    )
    examples, batch = pair_batch(tiny_tokenizer)
    # The same token sequences: TRL's rows (padding removed) are ours, chosen rows first.
    real = trl_inputs["attention_mask"].bool()
    trl_rows = [trl_inputs["input_ids"][i][real[i]].tolist() for i in range(real.shape[0])]
    assert trl_rows == [e.chosen.input_ids for e in examples] + [
        e.rejected.input_ids for e in examples
    ]

    pairs = batch.pairs
    logps = sequence_logprob_sums(ours_policy, batch.sequences)
    tokens = trained_tokens_per_row(batch.sequences)
    ref_chosen, ref_rejected = trl_inputs["ref_chosen_logps"], trl_inputs["ref_rejected_logps"]
    if loss_type == "dpo":
        losses = dpo_losses(logps[:pairs], logps[pairs:], ref_chosen, ref_rejected, beta=0.1)
    else:
        losses = ipo_losses(
            logps[:pairs],
            logps[pairs:],
            ref_chosen,
            ref_rejected,
            chosen_tokens=tokens[:pairs],
            rejected_tokens=tokens[pairs:],
            beta=0.1,
        )
    assert float(losses.mean()) == pytest.approx(float(trl_loss), abs=1e-5)

    # The whole objective, computing its own reference log-probs, agrees too.
    objective = PreferenceOptimization(
        loss_type, beta=0.1, reference=ReferenceModel(lambda: ours_reference)
    )
    loss_sum, units = objective.loss_sum(ours_policy, batch)
    assert units == pairs
    assert float(loss_sum) / units == pytest.approx(float(trl_loss), abs=1e-5)


def test_orpo_odds_ratio_term_matches_trl(tiny_tokenizer) -> None:
    # TRL keeps ORPO in trl.experimental; its odds_ratio_loss only reads self.beta and
    # self.accelerator.device, so it is called unbound with just those.
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.orpo import ORPOTrainer

    _, batch = pair_batch(tiny_tokenizer)
    model = build_tiny_model(len(tiny_tokenizer))
    logps = sequence_logprob_sums(model, batch.sequences)
    tokens = trained_tokens_per_row(batch.sequences)
    pairs = batch.pairs
    chosen_mean = logps[:pairs] / tokens[:pairs]
    rejected_mean = logps[pairs:] / tokens[pairs:]
    settings = SimpleNamespace(beta=0.1, accelerator=SimpleNamespace(device=torch.device("cpu")))
    trl_terms = ORPOTrainer.odds_ratio_loss(settings, chosen_mean, rejected_mean)[0]
    ours = orpo_losses(
        logps[:pairs],
        logps[pairs:],
        chosen_tokens=tokens[:pairs],
        rejected_tokens=tokens[pairs:],
        beta=0.1,
    )
    # ORPO = mean NLL of the chosen reply − TRL's β·log σ(log odds ratio).
    torch.testing.assert_close(ours, -chosen_mean - trl_terms, atol=1e-6, rtol=1e-6)


def window_gradients(model, objective, micro_batches) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    window = sum(objective.units(e) for group in micro_batches for e in group)
    loss, _, _ = backward_window(
        model,
        objective,
        micro_batches,
        window_tokens=window,
        batches=BatchSettings(PAD, pack=True, row_length=128, batch_size=4, device=CPU),
    )
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss) / window, grads


@pytest.mark.parametrize("name", ["dpo", "ipo", "orpo"])
def test_batch_4_x_accumulation_1_equals_2_x_2(tiny_tokenizer, tiny_model, name) -> None:
    model = lora_model(tiny_model)
    with torch.no_grad():  # a non-zero adapter, so policy and reference differ
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.05)
    examples, _ = pair_batch(tiny_tokenizer, count=4)
    assert len({len(e) for e in examples}) > 2  # different lengths, or padding is not tested
    objective = get_objective(name)
    loss_one, grads_one = window_gradients(model, objective, [examples])
    loss_two, grads_two = window_gradients(model, objective, [examples[:2], examples[2:]])
    assert loss_one == pytest.approx(loss_two, abs=1e-5)
    assert grads_one.keys() == grads_two.keys() and grads_one
    for parameter_name in grads_one:
        torch.testing.assert_close(
            grads_one[parameter_name], grads_two[parameter_name], atol=1e-5, rtol=1e-4
        )


def implicit_margin(model, batch) -> float:
    """Mean over pairs of (π − ref)(chosen) − (π − ref)(rejected): DPO's implicit reward gap."""
    pairs = batch.pairs
    with torch.no_grad():
        policy = sequence_logprob_sums(model, batch.sequences)
        with model.disable_adapter():
            reference = sequence_logprob_sums(model, batch.sequences)
    ratio = policy - reference
    return float((ratio[:pairs] - ratio[pairs:]).mean())


def test_dpo_with_lora_lowers_the_loss_and_widens_the_margin(
    tiny_tokenizer, tiny_model, tmp_path
) -> None:
    model = lora_model(tiny_model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    examples, batch = pair_batch(tiny_tokenizer)
    assert implicit_margin(model, batch) == pytest.approx(0.0, abs=1e-5)
    result = train(model, get_objective("dpo"), examples, tmp_path, steps=16)
    losses = [loss for _, loss in result.state.train_history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # log 2: policy == reference
    assert sum(losses[-4:]) / 4 < 0.4
    assert implicit_margin(model, batch) > 5.0
    for name, before in frozen.items():
        assert torch.equal(before, dict(model.named_parameters())[name]), name


@pytest.mark.parametrize("name", ["ipo", "orpo"])
def test_ipo_and_orpo_with_lora_lower_the_loss(tiny_tokenizer, tiny_model, tmp_path, name) -> None:
    model = lora_model(tiny_model)
    examples, batch = pair_batch(tiny_tokenizer)
    result = train(model, get_objective(name), examples, tmp_path, steps=16)
    losses = [loss for _, loss in result.state.train_history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4
    assert implicit_margin(model, batch) > 1.0


def test_full_fine_tuning_compares_against_a_loaded_frozen_base(tiny_tokenizer, tmp_path) -> None:
    vocab = len(tiny_tokenizer)
    loads: list[str] = []

    def load(name: str):
        loads.append(name)
        return build_tiny_model(vocab, seed=0)

    objective = build_objective(
        objective_settings(name="dpo", beta=0.1), model_loader=load, base_model="tiny-base"
    )
    model = build_tiny_model(vocab, seed=0)
    examples, _ = pair_batch(tiny_tokenizer)
    result = train(model, objective, examples, tmp_path, steps=10, learning_rate=1e-2)
    losses = [loss for _, loss in result.state.train_history]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)
    assert losses[-1] < 0.5
    assert loads == ["tiny-base"]  # loaded once, lazily, from the base model's name
    reference = objective.reference.loaded_copy
    assert reference is not None
    untouched = build_tiny_model(vocab, seed=0)
    assert all(not p.requires_grad for p in reference.parameters())
    for (name, kept), (_, base) in zip(
        reference.named_parameters(), untouched.named_parameters(), strict=True
    ):
        assert torch.equal(kept, base), name


def test_a_full_model_without_a_reference_loader_is_a_clear_error(tiny_tokenizer) -> None:
    _, batch = pair_batch(tiny_tokenizer, count=2)
    model = build_tiny_model(len(tiny_tokenizer))
    with pytest.raises(ObjectiveError, match="build_objective"):
        get_objective("dpo").loss_sum(model, batch)
