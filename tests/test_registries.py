"""Methods and objectives are named only in their own packages; the rest asks capabilities."""

from __future__ import annotations

import ast
from pathlib import Path

from tunesmith.methods import METHODS
from tunesmith.objectives import OBJECTIVES

SOURCE = Path(__file__).resolve().parents[1] / "src" / "tunesmith"
OWN_PACKAGES = {"methods", "objectives"}
# The same word meaning something else: a record field, not the method.
NOT_A_METHOD = {
    ("data/formats.py", "prompt"),
    ("data/preference.py", "prompt"),
    ("monitor/output.py", "prompt"),  # a record field
    ("monitor/retrain.py", "prompt"),  # a record field
    ("export/gguf_lora.py", "lora"),  # GGUF's own value of adapter.type
    # The plan offers the 4-bit variant by name, and probes it through the method whose
    # parameters it trains (its kernels are what the probe cannot run on meta tensors).
    ("plan/build.py", "lora"),
    ("plan/build.py", "dora"),
    ("plan/build.py", "qlora"),
    ("plan/weights.py", "lora"),
    ("plan/weights.py", "qlora"),
}


def _string_constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_no_method_or_objective_name_outside_its_package() -> None:
    names = set(METHODS) | set(OBJECTIVES)
    found = []
    for path in SOURCE.rglob("*.py"):
        relative = path.relative_to(SOURCE).as_posix()
        if relative.split("/")[0] in OWN_PACKAGES:
            continue
        for name in sorted(_string_constants(path) & names):
            if (relative, name) not in NOT_A_METHOD:
                found.append(f"{relative}: {name!r}")
    assert not found, "ask the registry for a capability instead:\n" + "\n".join(found)


def test_the_scan_sees_a_name_when_one_is_there(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('if config.method.name in ("prefix", "prompt"):\n    pass\n')
    assert {"prefix", "prompt"} <= _string_constants(sample)


def test_every_setting_of_every_method_and_objective_says_what_it_does() -> None:
    settings = [m.settings for m in METHODS.values()] + [o.settings for o in OBJECTIVES.values()]
    for model in settings:
        for key, field in model.model_fields.items():
            assert key == "name" or field.description, f"{model.__name__}.{key} has no help"
