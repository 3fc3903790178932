"""The base of every adapter that wraps a frozen `nn.Linear`.

A subclass declares its trainable tensors as `nn.Parameter`s, implements `delta_weight()` (the (out, in) update
in float32) and `adapted_forward(x)`. Merge, unmerge, enable and disable are shared here.
"""
from __future__ import annotations

import torch
from torch import nn

from ..targets import replace_module


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the layer computes in: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class AdapterLinear(nn.Module):
    """y = base(x) + x ΔWᵀ, with `base` frozen. Subclasses set up their parameters in `__init__`."""

    def __init__(self, base: nn.Linear, config) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.config = config
        self.merged = False
        self.enabled = True

    # --- what subclasses provide -------------------------------------------------------------------------
    @classmethod
    def shared_state(cls, model: nn.Module, config, targets: dict[str, nn.Linear]) -> dict:
        """State shared by all layers of one model (RandLoRA's bases); passed to each `__init__` as kwargs."""
        return {}

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in) in float32."""
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # --- shared behaviour ----------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.enabled:
            return self.base(x)
        return self.adapted_forward(x)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            w = self.base.weight
            w.copy_((w.float() + self.delta_weight().to(w.device)).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.base.weight
            w.copy_((w.float() - self.delta_weight().to(w.device)).to(w.dtype))
            self.merged = False

    def set_enabled(self, enabled: bool) -> None:
        if not enabled:
            self.unmerge()
        self.enabled = enabled

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, merged={self.merged}"

    @classmethod
    def adapt_model(cls, model: nn.Module, config, targets: dict[str, nn.Linear]) -> None:
        """Replace every target by an instance of `cls`; called by `randlora.adapt` on a frozen model."""
        shared = cls.shared_state(model, config, targets)
        for name, linear in targets.items():
            replace_module(model, name, cls(linear, config, **shared))
