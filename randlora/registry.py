"""Registry of adapter implementations keyed by (method, impl).

An implementation registers itself with ``@register("randlora", "sparse")``; `randlora.adapt` looks it up from the
config. Adding a variant touches its own file and its tests, nothing else.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from .errors import ConfigError

T = TypeVar("T")
_IMPLEMENTATIONS: dict[tuple[str, str], type] = {}


def register(method: str, impl: str) -> Callable[[T], T]:
    def decorate(cls: T) -> T:
        key = (method, impl)
        if key in _IMPLEMENTATIONS:
            raise RuntimeError(f"implementation {key} registered twice")
        _IMPLEMENTATIONS[key] = cls
        return cls

    return decorate


def lookup(method: str, impl: str) -> type:
    try:
        return _IMPLEMENTATIONS[(method, impl)]
    except KeyError:
        allowed = sorted(i for m, i in _IMPLEMENTATIONS if m == method)
        raise ConfigError(
            f"impl {impl!r} is not available for method {method!r}; allowed values are {', '.join(map(repr, allowed))}."
        ) from None


def implementations() -> list[tuple[str, str]]:
    """Every registered (method, impl) pair, sorted."""
    return sorted(_IMPLEMENTATIONS)
