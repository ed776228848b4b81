"""Every registered method and objective has a preset and a docs line; every preset runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tunesmith.cli import app
from tunesmith.config import load_config
from tunesmith.methods import METHODS
from tunesmith.objectives import OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "examples").glob("*.yaml"))
runner = CliRunner()


def preset_values(section: str) -> set[str]:
    names = set()
    for preset in PRESETS:
        raw = yaml.safe_load(preset.read_text()) or {}
        names.add(raw.get(section, {}).get("name", "lora" if section == "method" else "sft"))
    return names


def test_every_method_has_a_preset_and_a_docs_line() -> None:
    assert set(METHODS) <= preset_values("method")
    docs = (REPO / "docs" / "methods.md").read_text()
    for name in METHODS:
        assert f"| `{name}` |" in docs, f"docs/methods.md has no row for {name}"


def test_every_objective_has_a_preset() -> None:
    assert set(OBJECTIVES) <= preset_values("objective")


def run_preset(preset: Path, model_dir: Path, out: Path, *extra: str) -> None:
    result = runner.invoke(
        app,
        [
            "train", str(preset), "--no-eval",
            "--set", f"model.name={model_dir}",
            "--set", "train.max_steps=2",
            "--set", "data.max_length=4096",
            "--set", f"output.dir={out}",
            *extra,
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / preset.stem / "final").is_dir()


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_preset_is_valid_and_trains_two_steps(preset: Path, tiny_model_dir: Path, tmp_path) -> None:
    config = load_config(preset)
    assert config.data.train and all(path.is_file() for path in config.data.train)
    extra: list[str] = []
    if getattr(config.objective, "teacher", None):
        extra = ["--set", f"objective.teacher={tiny_model_dir}"]
    if getattr(config.objective, "reward_model", None):
        reward = REPO / "examples" / "preference-reward.yaml"
        run_preset(reward, tiny_model_dir, tmp_path)
        extra = ["--set", f"objective.reward_model={tmp_path / reward.stem}"]
    run_preset(preset, tiny_model_dir, tmp_path, *extra)
