"""Preference and pretrain runs get their own verdicts, measured on held-out data.

Real runs of the real CLI on the tiny model: the numbers in results.json are checked
against scores recomputed here by hand, one unbatched forward per sequence.
"""

from __future__ import annotations

import json
import math
import random
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.data.preference import tokenize_pair
from tunesmith.data.records import Message, Preference, Source
from tunesmith.data.tokenize import IGNORE_INDEX
from tunesmith.evaluate.compare import FINE_TUNED
from tunesmith.evaluate.perplexity import text_likelihood
from tunesmith.evaluate.preference import BASE, preference_metric_scores, score_pairs
from tunesmith.runs import load_trained

runner = CliRunner()
QUESTIONS = [
    "capital of France?", "What is two plus two?", "Translate to French: hello",
    "say thank you", "say goodbye", "a number", "two numbers", "one word",
    "another word", "Reply in JSON", "capital of Italy?", "What is three plus five?",
]  # fmt: skip


def _train(config: Path, *extra: str) -> str:
    result = runner.invoke(app, ["train", str(config), *extra])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.output


def _reply_logprob(model, example) -> float:
    """Summed log p of the reply tokens of one tokenized sequence, from a plain forward."""
    ids = torch.tensor([example.input_ids])
    labels = torch.tensor(example.labels)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double()
    logprobs = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    keep = labels[1:] != IGNORE_INDEX
    return float(logprobs[torch.arange(len(targets)), targets][keep].sum())


def test_score_pairs_follows_each_objective() -> None:
    def logprobs(chosen, rejected, chosen_tokens, rejected_tokens):
        from tunesmith.evaluate.preference import PairLogprobs

        return PairLogprobs(*(np.array(v, dtype=float) for v in (chosen, rejected,
                             chosen_tokens, rejected_tokens)))  # fmt: skip

    tuned = logprobs([-2.0, -9.0], [-4.0, -3.0], [2, 3], [4, 1])
    base = logprobs([-3.0, -8.0], [-3.0, -3.0], [2, 3], [4, 1])
    dpo = score_pairs("log_ratio_sum", lambda: tuned, lambda: base, beta=0.5)
    np.testing.assert_allclose(dpo[FINE_TUNED].chosen, [0.5, -0.5])
    np.testing.assert_allclose(dpo[FINE_TUNED].rejected, [-0.5, 0.0])
    assert not dpo[BASE].chosen.any() and not dpo[BASE].rejected.any()
    ipo = score_pairs("log_ratio_per_token", lambda: tuned, lambda: base, beta=0.5)
    np.testing.assert_allclose(ipo[FINE_TUNED].chosen, [0.5, -1 / 3])
    orpo = score_pairs("mean_logprob", lambda: tuned, lambda: base, beta=0.5)
    np.testing.assert_allclose(orpo[BASE].chosen, [-1.5, -8 / 3])
    np.testing.assert_allclose(orpo[FINE_TUNED].rejected, [-1.0, -3.0])
    scores = preference_metric_scores(dpo[BASE])
    assert scores["preference_accuracy"].value == 0.5  # ties count half: the base is chance
    assert scores["preference_margin"].value == 0.0
    tuned_scores = preference_metric_scores(dpo[FINE_TUNED])
    assert tuned_scores["preference_accuracy"].per_item.tolist() == [1.0, 0.0]
    assert tuned_scores["preference_margin"].value == pytest.approx(0.25)
    assert not tuned_scores["preference_margin"].proportion


def _write_pairs(path: Path, n: int) -> None:
    """Prompts of every kind; the chosen reply is always 'yes', the rejected one 'no'."""
    rows = [
        {"prompt": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})", "chosen": "yes", "rejected": "no"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_dpo_run_is_judged_on_held_out_pairs(tmp_path: Path, tiny_model_dir: Path) -> None:
    _write_pairs(tmp_path / "pairs.jsonl", 60)
    config = tmp_path / "dpo.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: pairs.jsonl, split: [0.7, 0.1, 0.2], max_length: 64}}
            method: {{name: lora, r: 4, alpha: 8, dropout: 0.0}}
            objective: {{name: dpo, beta: 0.5}}
            train: {{max_steps: 12, batch_size: 8, learning_rate: 0.02, eval_every: 12,
                     early_stopping_patience: null}}
            eval: {{max_new_tokens: 4, forgetting_threshold: 100.0}}
            output: {{dir: runs, name: dpo}}
            """
        )
    )
    output = _train(config, "--set", f"output.dir={tmp_path / 'runs'}")
    assert "preference pairs" in output
    run_dir = tmp_path / "runs" / "dpo"
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["kind"] == "preference" and results["settings"]["pairs"] == 12
    metrics = {row["metric"]: row for row in results["comparison"]["metrics"]}
    accuracy = metrics["preference_accuracy"]["values"]
    assert accuracy["base"]["estimate"] == 0.5  # implicit reward 0: chance
    assert accuracy["fine-tuned"]["estimate"] == 1.0  # learnt "yes" over "no" on new prompts
    assert results["comparison"]["beats_baseline"]
    assert results["comparison"]["verdict"].startswith(
        "fine-tuned beats the best baseline (base) on preference_accuracy by 50.0 points"
    )
    assert results["comparison"]["verdict"] in output

    # The implicit rewards are β·(log π − log π_base) of each reply, recomputed by hand.
    trained = load_trained(run_dir)
    record = Preference(
        (Message("user", "capital of France? (0)"),),
        Message("assistant", "yes"),
        Message("assistant", "no"),
        Source("x", 1),
    )
    pair = tokenize_pair(trained.tokenizer, record)
    tuned = [_reply_logprob(trained.model, side) for side in (pair.chosen, pair.rejected)]
    with trained.model.disable_adapter():
        base = [_reply_logprob(trained.model, side) for side in (pair.chosen, pair.rejected)]
    margin = 0.5 * ((tuned[0] - base[0]) - (tuned[1] - base[1]))
    # Every held-out pair has the same replies, so its margin is close to this one's.
    assert margin > 0
    margins = np.array(results["pairs"]["fine-tuned"]["chosen"]) - np.array(
        results["pairs"]["fine-tuned"]["rejected"]
    )
    assert (margins > 0).all()
    assert metrics["preference_margin"]["values"]["fine-tuned"]["estimate"] == pytest.approx(
        margins.mean()
    )
    report = (run_dir / "eval" / "report.html").read_text()
    assert "Base vs fine-tuned generations" in report and "rejected: no" in report


def test_reward_run_scores_pairs_with_its_trained_head(tmp_path: Path, tiny_model_dir) -> None:
    _write_pairs(tmp_path / "pairs.jsonl", 40)
    config = tmp_path / "reward.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: pairs.jsonl, split: [0.7, 0.1, 0.2], max_length: 64}}
            method: {{name: lora, r: 4, alpha: 8, dropout: 0.0}}
            objective: {{name: reward}}
            train: {{max_steps: 10, batch_size: 8, learning_rate: 0.02, eval_every: 10,
                     early_stopping_patience: null}}
            eval: {{max_new_tokens: 2, forgetting_threshold: 100.0}}
            output: {{dir: runs, name: reward}}
            """
        )
    )
    _train(config, "--set", f"output.dir={tmp_path / 'runs'}")
    results = json.loads((tmp_path / "runs" / "reward" / "eval" / "results.json").read_text())
    metrics = {row["metric"]: row for row in results["comparison"]["metrics"]}
    assert metrics["preference_accuracy"]["values"]["fine-tuned"]["estimate"] == 1.0
    tuned = results["pairs"]["fine-tuned"]
    base = results["pairs"]["base"]
    assert len(tuned["chosen"]) == len(base["chosen"]) == 8
    # The base reads the same head on the base model's hidden states: other scores.
    assert tuned["chosen"] != base["chosen"]


def test_pretrain_run_is_judged_by_held_out_perplexity(tmp_path: Path, tiny_model_dir) -> None:
    # Distinct documents (near-duplicates would stay in one split) over eight words: a
    # corpus a model can learn in a few steps, held-out documents included.
    words = ["the", "capital", "of", "France", "is", "Paris", "Rome", "Italy"]
    rng = random.Random(0)
    blocks = [" ".join(rng.choice(words) for _ in range(14)) for _ in range(30)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(blocks) + "\n")
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{tiny_model_dir}"}}
            data: {{train: corpus.txt, split: [0.7, 0.1, 0.2], max_length: 64}}
            method: {{name: full}}
            objective: {{name: pretrain}}
            train: {{max_steps: 15, batch_size: 8, learning_rate: 0.01, eval_every: 15,
                     early_stopping_patience: null}}
            eval: {{forgetting_threshold: 100.0}}
            output: {{dir: runs, name: pretrain}}
            """
        )
    )
    output = _train(config, "--set", f"output.dir={tmp_path / 'runs'}")
    assert "held-out text" in output
    run_dir = tmp_path / "runs" / "pretrain"
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["kind"] == "perplexity" and results["settings"]["texts"] == 6
    row = results["comparison"]["metrics"][0]
    base, tuned = row["values"]["base"]["estimate"], row["values"]["fine-tuned"]["estimate"]
    assert tuned < 0.75 * base
    assert results["comparison"]["beats_baseline"]
    assert "on perplexity (lower is better): base " in results["comparison"]["verdict"]

    # A full fine-tune has no adapter to switch off: the base was loaded on its own. Its
    # corpus perplexity is the untrained model's, recomputed here over the same texts.
    untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    sources = results["settings"]["sources"]
    texts = [blocks[int(source.rsplit(":", 1)[1]) // 2] for source in sources]
    parts = [text_likelihood(untrained, tokenizer, text, window=64) for text in texts]
    expected = math.exp(sum(p.total_nll for p in parts) / sum(p.n_tokens for p in parts))
    assert base == pytest.approx(expected, rel=1e-4)
