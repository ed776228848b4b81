"""Where methods register themselves: one `register(...)` line at the end of each method file.

`tunesmith.methods` imports every public module of the package, so a new file is found
without editing any list; the run config builds its `method:` union from what registered.
"""

from __future__ import annotations

from tunesmith.methods.base import Method, MethodError, MethodSettings

DEFAULT_METHOD = "lora"

_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` available to configs and every entry point under `method.name`."""
    declared = method.settings.model_fields["name"].default
    if declared != method.name:
        raise TypeError(f"{type(method).__name__}.settings names {declared!r}, not {method.name!r}")
    if method.name in _METHODS:
        raise TypeError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def registered_methods() -> dict[str, Method]:
    return dict(_METHODS)


def get_method(name: str) -> Method:
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodError(
            f"method {name!r} is not registered; available: {', '.join(sorted(_METHODS))}."
        ) from None


def method_settings(name: str = DEFAULT_METHOD, **values: object) -> MethodSettings:
    """Validated settings of method `name` (defaults for every knob not given)."""
    return get_method(name).settings(name=name, **values)
