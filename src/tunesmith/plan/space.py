"""A sweep's search space, from YAML: each key a config path, each value a range or a list.

    learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}   # train.learning_rate
    method.r: [4, 8, 16]                                      # one of these
    train.epochs: {low: 1, high: 3}                           # integers when both are
    method.name: [lora, dora]

Knobs of one method (``method.r``) apply only to trials whose method has them, so
``method.name`` and ``method.r`` can be searched together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tunesmith.errors import TunesmithError
from tunesmith.methods import get_method

SHORTHANDS = {"learning_rate": "train.learning_rate", "epochs": "train.epochs"}


class SpaceError(TunesmithError):
    """A search space that cannot be searched; the message names the key and the fix."""


@dataclass(frozen=True)
class Dimension:
    key: str
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log)


def load_space(path: Path) -> list[Dimension]:
    """The dimensions of ``path``; an empty or malformed space is one clear error."""
    if not path.is_file():
        raise SpaceError(f"--space {path}: file not found. Pass a YAML search space.")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise SpaceError(f"{path}: not valid YAML ({error}).") from None
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(
            f"{path}: the search space is empty. Give at least one key, e.g. "
            "'learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}'."
        )
    return [_dimension(path, str(key), value) for key, value in raw.items()]


def _dimension(path: Path, key: str, value: object) -> Dimension:
    key = SHORTHANDS.get(key, key)
    if isinstance(value, list):
        if not value:
            raise SpaceError(f"{path}: {key}: an empty list of choices; give at least one.")
        return Dimension(key, choices=value)
    if isinstance(value, dict) and {"low", "high"} <= set(value):
        low, high = value["low"], value["high"]
        if not isinstance(low, int | float) or not isinstance(high, int | float) or low >= high:
            raise SpaceError(f"{path}: {key}: needs numbers with low < high, got {value}.")
        integer = isinstance(low, int) and isinstance(high, int) and not value.get("log", False)
        return Dimension(key, low=low, high=high, log=bool(value.get("log", False)),
                         integer=integer or bool(value.get("int", False)))  # fmt: skip
    raise SpaceError(
        f"{path}: {key}: expected a list of choices or {{low: …, high: …, log: true|false}}, "
        f"got {value!r}."
    )


def overrides_for(params: dict[str, Any], method_name: str) -> list[str]:
    """``--set`` overrides of one trial; method knobs its method lacks are left out."""
    method = params.get("method.name", method_name)
    fields = get_method(method).settings.model_fields
    chosen = []
    for key, value in params.items():
        if key.startswith("method.") and key != "method.name" and key[7:] not in fields:
            continue
        chosen.append(f"{key}={value}")
    if "method.name" in params:  # the method's other knobs go back to its defaults
        chosen = [c for c in chosen if not c.startswith("method.")]
        knobs = {k[7:]: v for k, v in params.items() if k.startswith("method.") and k[7:] in fields}
        chosen.append(
            "method=" + yaml.safe_dump({**knobs, "name": method}, default_flow_style=True).strip()
        )
    return chosen
