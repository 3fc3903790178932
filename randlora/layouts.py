"""The layer types an adapter can wrap, and how each stores its weight: a registry keyed by class path.

`nn.Linear` stores W (out, in) and computes y = x Wᵀ + b. transformers' `Conv1D` (GPT-2, GPT-J's ancestors, ...)
computes the same function with the weight stored transposed, (in, out) (peft calls this `fan_in_fan_out`).
The adapters work on the (out, in) view of either (`weight_out_in`: a view, no copy, so merging into it writes the
stored weight). Classes are named by their import path, not imported, so the library does not import
transformers; a subclass of a registered class is found through its MRO.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Layout:
    name: str  # how messages call the layer type
    transposed: bool  # the weight is stored (in, out) instead of nn.Linear's (out, in)


LAYOUTS: dict[str, Layout] = {
    "torch.nn.modules.linear.Linear": Layout("nn.Linear", transposed=False),
    "transformers.pytorch_utils.Conv1D": Layout("transformers' Conv1D", transposed=True),
}
KINDS = "nn.Linear or transformers' Conv1D"  # what messages say can be adapted


def layout_of(module: nn.Module) -> Layout | None:
    """The layout of `module`'s class (or of the nearest registered base class); None if it cannot be adapted."""
    for cls in type(module).__mro__:
        layout = LAYOUTS.get(f"{cls.__module__}.{cls.__qualname__}")
        if layout is not None:
            return layout
    return None


def is_linear(module: nn.Module) -> bool:
    return layout_of(module) is not None


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out, in), a view of the stored tensor."""
    return module.weight.T if layout_of(module).transposed else module.weight


def features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a registered linear layer: its declared sizes where it has them (a quantised
    nn.Linear's weight is packed, so its shape says nothing), else its (out, in) weight view's shape (Conv1D)."""
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int):
        return module.out_features, module.in_features
    out_features, in_features = weight_out_in(module).shape
    return out_features, in_features
