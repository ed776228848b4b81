"""Fine-tuning methods: each module wraps a base model one way and registers itself.

Adding a method means one file here: its settings model, a class of the `Method` shape,
and a `register(...)` line. Every public module of this package is imported below, so
nothing else in tunesmith changes.
"""

from __future__ import annotations

import importlib
import pkgutil

from tunesmith.methods.base import Method, MethodError, MethodSettings, count_parameters
from tunesmith.methods.registry import (
    DEFAULT_METHOD,
    get_method,
    method_settings,
    registered_methods,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_module.name}")

METHODS: dict[str, Method] = registered_methods()

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "Method",
    "MethodError",
    "MethodSettings",
    "count_parameters",
    "get_method",
    "method_settings",
]
