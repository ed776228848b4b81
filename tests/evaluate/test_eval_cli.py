"""`tunesmith eval RUN --metric ...` through the real CLI on a tiny chat-classification run."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from tunesmith.cli import app

runner = CliRunner()
SYSTEM = "Classify the sentiment of the review. Answer with one of: positive, negative."
REVIEWS = ["great film", "lovely actors", "what a waste", "boring and long", "wonderful"]


def _chat_run(tmp_path: Path, model_dir: Path, replies: list[str]) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{REVIEWS[i % len(REVIEWS)]} ({i})"},
                {"role": "assistant", "content": reply},
            ]
        }
        for i, reply in enumerate(replies)
    ]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "chat.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            model: {{name: "{model_dir}"}}
            data: {{train: chat.jsonl, split: [0.7, 0.1, 0.2], max_length: 96}}
            method: {{name: lora, r: 4, alpha: 8}}
            train: {{max_steps: 2, batch_size: 8, eval_every: 2}}
            eval: {{k_shot: 1, max_new_tokens: 4}}
            output: {{dir: "{tmp_path / "runs"}", name: chat}}
            """
        )
    )
    trained = runner.invoke(app, ["train", str(config), "--no-eval"])
    assert trained.exit_code == 0, trained.output
    return tmp_path / "runs" / "chat"


def test_accuracy_on_chat_classification_is_label_ranked(tmp_path: Path, tiny_model_dir) -> None:
    run_dir = _chat_run(tmp_path, tiny_model_dir, ["positive", "negative"] * 20)
    result = runner.invoke(app, ["eval", str(run_dir), "--metric", "accuracy"])
    assert result.exit_code == 0, result.output
    assert "classification:" in result.output and "accuracy" in result.output
    saved = json.loads((run_dir / "eval" / "results.json").read_text())
    assert saved["kind"] == "classification"
    assert saved["settings"]["label_constrained"] == ["negative", "positive"]
    assert [row["metric"] for row in saved["comparison"]["metrics"]] == ["accuracy"]
    assert saved["comparison"]["verdict"] in result.output


def test_metric_mistakes_exit_2_with_the_fix(tmp_path: Path, tiny_model_dir) -> None:
    run_dir = _chat_run(tmp_path, tiny_model_dir, [f"a free reply number {i}" for i in range(40)])
    misspelt = runner.invoke(app, ["eval", str(run_dir), "--metric", "acuracy"])
    assert misspelt.exit_code == 2
    assert "did you mean 'accuracy'?" in misspelt.output and "Traceback" not in misspelt.output
    free_text = runner.invoke(app, ["eval", str(run_dir), "--metric", "accuracy"])
    assert free_text.exit_code == 2, free_text.output
    assert "exact_match:text" in free_text.output and "Traceback" not in free_text.output
    wrong_kind = runner.invoke(app, ["eval", str(run_dir), "--metric", "perplexity"])
    assert wrong_kind.exit_code == 2
    assert "raw-text (pretrain) runs" in wrong_kind.output
