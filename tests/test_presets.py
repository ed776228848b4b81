"""Every registered method and objective has a preset and a docs line.

That every preset trains to a verdict is `tests/test_preset_verdicts.py`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tunesmith.methods import METHODS
from tunesmith.objectives import OBJECTIVES

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "examples").glob("*.yaml"))


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
