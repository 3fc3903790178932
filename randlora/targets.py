"""Selecting modules by name or regular expression, and swapping them in place."""
from __future__ import annotations

import re

from torch import nn

from .errors import ConfigError
from .layouts import KINDS, is_linear


def _matches(pattern: str, name: str) -> bool:
    if name == pattern or name.rsplit(".", 1)[-1] == pattern:
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


ALL_LINEAR = "all-linear"


def _all_linear(model: nn.Module, exclude: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """Every linear layer (nn.Linear or Conv1D, `layouts.py`) except the output layer (`get_output_embeddings()`)
    and the modules matching `exclude` or inside one that does (exclude "pooler" and its "pooler.dense" is left out
    too)."""
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    excluded = [name for name, _ in model.named_modules() if name and any(_matches(p, name) for p in exclude)]

    def left_out(name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in excluded)

    return [
        (name, m)
        for name, m in model.named_modules()
        if is_linear(m) and m is not output and not left_out(name)
    ]


def select_modules(
    model: nn.Module, patterns: tuple[str, ...], field: str, linear_only: bool, exclude: tuple[str, ...] = ()
) -> dict[str, nn.Module]:
    """Modules whose name matches any pattern, in model order.

    The pattern "all-linear" selects every linear layer (`layouts.py`) but the output layer and the modules matching
    `exclude` (the config's trainable_modules, e.g. a classification head trained in full).

    Every pattern must match at least one module, and with `linear_only` every match must be a linear layer;
    otherwise a ConfigError names the pattern (or module) and what would be right.
    """
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{field} pattern {pattern!r} is not a valid regular expression ({exc}).") from None
    named = [(name, module) for name, module in model.named_modules() if name]
    selected: dict[str, nn.Module] = {}
    for pattern in patterns:
        if pattern == ALL_LINEAR:
            hits = _all_linear(model, exclude)
        else:
            hits = [(name, module) for name, module in named if _matches(pattern, name)]
        if not hits:
            linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in named if is_linear(m)})
            hint = f"; the model's linear layers are named {', '.join(linear_names[:12])}" if linear_names else ""
            raise ConfigError(f"{field} pattern {pattern!r} matches no module of the model{hint}.")
        for name, module in hits:
            if linear_only and not is_linear(module):
                raise ConfigError(
                    f"{field} pattern {pattern!r} selects {name!r}, a {type(module).__name__}; "
                    f"only linear layers ({KINDS}) can be adapted, so narrow the pattern to the linear layers."
                )
            selected[name] = module
    return selected


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
