"""Fine-tuning methods: each module wraps a base model one way and registers itself.

Adding a method means one file here with a class of the `Method` shape and one
line in `_REGISTERED` below. Nothing else in tunesmith changes.
"""

from __future__ import annotations

from tunesmith.methods.adapter import BottleneckAdapters
from tunesmith.methods.base import Method, MethodError, count_parameters
from tunesmith.methods.dora import DoRA
from tunesmith.methods.freeze import FreezeTuning
from tunesmith.methods.full import FullFineTuning
from tunesmith.methods.ia3 import IA3
from tunesmith.methods.lora import LoRA
from tunesmith.methods.prefix import PrefixTuning
from tunesmith.methods.prompt import PromptTuning
from tunesmith.methods.qlora import QLoRA

_REGISTERED: tuple[Method, ...] = (
    FullFineTuning(),
    LoRA(),
    DoRA(),
    QLoRA(),
    PrefixTuning(),
    PromptTuning(),
    IA3(),
    BottleneckAdapters(),
    FreezeTuning(),
)

METHODS: dict[str, Method] = {method.name: method for method in _REGISTERED}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise MethodError(
            f"method {name!r} is not registered; available: {', '.join(sorted(METHODS))}."
        ) from None


__all__ = ["METHODS", "Method", "MethodError", "count_parameters", "get_method"]
