"""Where methods register themselves: one `register(...)` line at the end of each method file.

`tunesmith.methods` imports every public module of the package, so a new file is found
without editing any list; the run config builds its `method:` union from what registered.
"""

from __future__ import annotations

from tunesmith.methods.base import Method, MethodError, MethodSettings
from tunesmith.registry import Registry

DEFAULT_METHOD = "lora"

_METHODS: Registry[Method] = Registry("method", MethodError)


def register(method: Method) -> Method:
    """Make `method` available to configs and every entry point under `method.name`."""
    return _METHODS.add(method.name, method, method.settings)


def registered_methods() -> dict[str, Method]:
    return _METHODS.all()


def get_method(name: str) -> Method:
    return _METHODS.get(name)


def method_settings(name: str = DEFAULT_METHOD, **values: object) -> MethodSettings:
    """Validated settings of method `name` (defaults for every knob not given)."""
    return get_method(name).settings(name=name, **values)
