"""Quantised frozen bases: which `nn.Linear` subclasses hold a quantised weight, and how to read it back as floats.

An adapter over a quantised layer cannot fold ΔW into the stored weight (it is packed 4-bit or int8 codes), so the
layers ask `kind_of(base)` once: None for a plain float layer, else the `QuantKind` that knows the storage. Kinds
are registered here, one entry each (bitsandbytes' 4-bit `Linear4bit` (nf4 / fp4) and 8-bit `Linear8bitLt`);
adding a library is one more `register`. A library is never imported here: while it is not in `sys.modules`, no
module of the model can be one of its layers, so models without quantised layers never pay for the import.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class QuantKind:
    """One way a linear layer stores its weight quantised."""

    name: str  # for messages: "bitsandbytes 4-bit (nf4)"
    module: str  # the library that must already be imported for a layer to be of this kind
    matches: Callable[[nn.Module], bool]  # called only once `module` is in sys.modules
    dequantize: Callable[[nn.Module], torch.Tensor]  # the stored weight as floats (out, in)
    float_dtype: Callable[[nn.Module], torch.dtype]  # the float dtype the layer stands for (its outputs, ΔW's)


_KINDS: list[QuantKind] = []


def register(kind: QuantKind) -> QuantKind:
    if any(k.name == kind.name for k in _KINDS):
        raise RuntimeError(f"quantised kind {kind.name!r} registered twice")
    _KINDS.append(kind)
    return kind


def kind_of(module: nn.Module) -> QuantKind | None:
    """The kind of quantised storage `module` has, or None for a plain float layer."""
    for kind in _KINDS:
        if kind.module in sys.modules and kind.matches(module):
            return kind
    return None


def is_quantized(module: nn.Module) -> bool:
    return kind_of(module) is not None


# --- bitsandbytes -------------------------------------------------------------------------------------------
def _bnb():
    import bitsandbytes

    return bitsandbytes


def _dequantize_4bit(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    return _bnb().functional.dequantize_4bit(weight.data, weight.quant_state)  # (out, in) in quant_state.dtype


def _float_dtype_4bit(module: nn.Module) -> torch.dtype:
    # the dtype the weight was quantised from; compute_dtype is only what bnb's matmul runs in
    return module.weight.quant_state.dtype


def _dequantize_8bit(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    # the row scales live on the weight until the first forward, on the layer's state after it
    scales = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
    if scales is None:  # has_fp16_weights=True, or not yet moved to its device: the weight is still floats
        return weight.data
    return _bnb().functional.int8_vectorwise_dequant(weight.data, scales)  # (out, in) float32


def _float_dtype_8bit(module: nn.Module) -> torch.dtype:
    # bnb's int8 layer does not record the dtype it was quantised from; its bias (cast to the inputs' dtype at each
    # forward) is the best witness, float32 without one
    return module.bias.dtype if module.bias is not None else torch.float32


register(QuantKind(
    "bitsandbytes 4-bit", "bitsandbytes",
    lambda m: isinstance(m, _bnb().nn.Linear4bit), _dequantize_4bit, _float_dtype_4bit,
))  # fmt: skip
register(QuantKind(
    "bitsandbytes int8", "bitsandbytes",
    lambda m: isinstance(m, _bnb().nn.Linear8bitLt), _dequantize_8bit, _float_dtype_8bit,
))  # fmt: skip


def dequantized_linear(module: nn.Module, kind: QuantKind) -> nn.Linear:
    """A plain `nn.Linear` holding `module`'s dequantised weight (and its bias) in the layer's float dtype."""
    dtype = kind.float_dtype(module)
    weight = kind.dequantize(module).to(dtype)
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                       device=weight.device, dtype=dtype)  # fmt: skip
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    linear.requires_grad_(False)
    return linear
