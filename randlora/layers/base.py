"""The base of every adapter that wraps a frozen linear layer: an `nn.Linear`, or transformers' `Conv1D` whose
weight is stored (in, out) (`randlora.layouts`); adapters see every base weight as (out, in).

A subclass declares its trainable tensors as `nn.Parameter`s, implements `reset_parameters()` (a fresh adapter,
ΔW = 0), `delta_weight()` (the (out, in) update in float32) and `adapted_forward(x)`. Merge, unmerge, enable and
disable are shared here.

A quantised base (`randlora.quantized`: a bitsandbytes 4-bit or int8 layer) keeps its own forward; the adapter adds
x ΔWᵀ beside it and `merge` is refused, since ΔW cannot be folded into packed codes (`merge(model, dequantize=True)`
swaps in a dequantised float copy first).

States: a layer is enabled or disabled, and merged or not; a disabled layer is never merged (disabling unmerges,
and merging a disabled layer is refused), so a disabled layer always computes the base function.

The meta device (no autocast there) runs the same code: a forward on meta tensors gives meta outputs of the right
shape and dtype, e.g. for shape inference before `to_empty`.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import ConfigError
from ..quantized import dequantized_linear, kind_of
from ..layouts import features, weight_out_in
from ..targets import replace_module


def _has_autocast(device: torch.device) -> bool:
    """Whether autocast exists for `device` (not on meta). Under torch.compile the answer is taken as yes without
    asking: dynamo before torch 2.13 cannot trace `torch.amp.is_autocast_available` and broke every adapted layer's
    graph there (measured on an H200 with torch 2.11: compiled blocks ran at about half the eager speed,
    reports/perf2-h200/), and nothing is compiled on the meta device."""
    if device.type == "meta":
        return False
    return torch.compiler.is_compiling() or torch.amp.is_autocast_available(device.type)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the layer computes in: autocast's when it is on for x's device, else x's own."""
    if _has_autocast(x.device) and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def autocast_off(device: torch.device):
    """A context with autocast off on `device` (nothing to switch off on devices without autocast, like meta)."""
    if _has_autocast(device):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


class AdapterLinear(nn.Module):
    """y = base(x) + x ΔWᵀ, with `base` frozen. Subclasses set up their parameters in `__init__`."""

    def __init__(self, base: nn.Module, config) -> None:
        super().__init__()
        self.base = base
        self.out_features, self.in_features = features(base)
        self.config = config
        self.quant = kind_of(base)  # None for a float base; else how its weight is stored
        self.merged = False
        self.enabled = True

    # --- what subclasses provide -------------------------------------------------------------------------
    @classmethod
    def shared_state(cls, model: nn.Module, config, targets: dict[str, nn.Module]) -> dict:
        """State shared by all layers of one model (RandLoRA's bases); passed to each `__init__` as kwargs."""
        return {}

    @classmethod
    def trainable_shapes(cls, config, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        """{parameter name: shape} of the trainables a layer of this shape declares (for checking files)."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        """Initialise the trainables as a fresh adapter (ΔW = 0); `randlora.init_adapters` calls it after to_empty."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in) in float32."""
        raise NotImplementedError

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def window_key(self, dtype: torch.dtype | None):
        """What groups this layer with others for an accumulation window (randlora.accumulation_window): layers of
        one key open and close together (`open_windows`, `close_windows`); None: the layer takes no window."""
        return None

    @classmethod
    def open_windows(cls, layers: list[AdapterLinear], dtype: torch.dtype | None) -> None:
        """Start an accumulation window on `layers`, which share one window_key."""

    @classmethod
    def close_windows(cls, layers: list[AdapterLinear], project: bool) -> None:
        """End the window of `layers`; with `project`, add the window's gradients to the trainables' .grad."""

    # --- shared behaviour ----------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def float_dtype(self) -> torch.dtype:
        """The dtype the base computes in: its weight's, or for a quantised base the dtype it was quantised from."""
        return self.base.weight.dtype if self.quant is None else self.quant.float_dtype(self.base)

    @property
    def weight_out_in(self) -> torch.Tensor:
        """The frozen weight as (out, in) whatever its layout: a view, so writing it writes the base's weight."""
        return weight_out_in(self.base)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged or not self.enabled:
            return self.base(x)
        return self.adapted_forward(x)

    @torch.no_grad()
    def merge(self) -> None:
        if not self.enabled:
            raise ConfigError("this adapter is disabled; call randlora.enable_adapters(model) before merging it.")
        if self.quant is not None and not self.merged:
            raise ConfigError(
                f"this layer's base is quantised ({self.quant.name}), so ΔW cannot be folded into it; call "
                "randlora.merge(model, dequantize=True) to replace the base by its dequantised float weight first."
            )
        if not self.merged:
            w = self.weight_out_in
            w.copy_((w.float() + self.delta_weight().to(w.device)).to(w.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            w = self.weight_out_in
            w.copy_((w.float() - self.delta_weight().to(w.device)).to(w.dtype))
            self.merged = False

    @torch.no_grad()
    def dequantize_base(self) -> None:
        """Replace a quantised base by a plain nn.Linear of its dequantised weight (a no-op on a float base)."""
        if self.quant is not None:
            self.base = dequantized_linear(self.base, self.quant)
            self.quant = None

    def set_enabled(self, enabled: bool) -> None:
        if not enabled:
            self.unmerge()
        self.enabled = enabled

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, merged={self.merged}"

    @classmethod
    def adapt_model(cls, model: nn.Module, config, targets: dict[str, nn.Module]) -> None:
        """Replace every target by an instance of `cls`; called by `randlora.adapt` on a frozen model."""
        shared = cls.shared_state(model, config, targets)
        for name, linear in targets.items():
            replace_module(model, name, cls(linear, config, **shared))
