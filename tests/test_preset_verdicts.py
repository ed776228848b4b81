"""Every preset in examples/ trains and ends with a verdict, on the tiny model, evaluation on.

Each objective's own evaluation is reached through the real CLI: chat presets compare
base zero-shot, base few-shot and fine-tuned; preference presets rank held-out pairs;
the pretrain preset measures held-out perplexity. Two steps and four evaluation items
keep the whole file to about a minute on two CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "examples").glob("*.yaml"))
runner = CliRunner()

EXPECTED_KIND = {
    "preference-dpo": "preference",
    "preference-ipo": "preference",
    "preference-orpo": "preference",
    "preference-reward": "preference",
    "preference-rlhf": "preference",
    "pretrain-shakespeare": "perplexity",
    "snips-intent-lora": "classification",
}


def train_with_verdict(preset: Path, model_dir: Path, out: Path, *extra: str) -> dict:
    result = runner.invoke(
        app,
        [
            "train", str(preset),
            "--set", f"model.name={model_dir}",
            "--set", "train.max_steps=2",
            "--set", "data.max_length=4096",
            "--set", f"output.dir={out}",
            "--set", "eval.max_items=4",
            "--set", "eval.max_new_tokens=4",
            "--set", "eval.k_shot=1",
            *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    results = json.loads((out / preset.stem / "eval" / "results.json").read_text())
    verdict = results["comparison"]["verdict"]
    assert verdict.startswith("fine-tuned ") and " beat" in verdict
    assert verdict in result.output.replace("\n", " ") or verdict[:60] in result.output
    assert (out / preset.stem / "eval" / "report.html").is_file()
    # The general-text forgetting check ran too (prompt tuning's virtual tokens once broke it).
    assert results["forgetting"]["n_tokens"] > 0
    return results


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_trains_and_ends_with_a_verdict(preset: Path, tiny_model_dir: Path, tmp_path):
    config = load_config(preset)
    assert config.data.train and all(path.is_file() for path in config.data.train)
    extra: list[str] = []
    if getattr(config.objective, "teacher", None):
        extra = ["--set", f"objective.teacher={tiny_model_dir}"]
    if getattr(config.objective, "reward_model", None):
        reward = REPO / "examples" / "preference-reward.yaml"
        train_with_verdict(reward, tiny_model_dir, tmp_path)
        extra = ["--set", f"objective.reward_model={tmp_path / reward.stem}"]
    results = train_with_verdict(preset, tiny_model_dir, tmp_path, *extra)
    assert results["kind"] == EXPECTED_KIND.get(preset.stem, "generation")
    assert results["comparison"]["n_items"] >= 1
