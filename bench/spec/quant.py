"""How a cell stores its frozen base: the `quant` field's registry.

    none   the precision's float dtype (bf16, fp32, ...), as every cell before this field
    int8   bitsandbytes' Linear8bitLt: LLM.int8() row-wise int8 weights, activations quantised per row at each matmul
    nf4    bitsandbytes' Linear4bit: QLoRA's 4-bit NormalFloat with double quantisation of the block scales

bitsandbytes is the library because it is the one every compared method accepts: peft's LoRA and RandLora wrap its
Linear4bit / Linear8bitLt (peft's RandLora has no torchao path), and `randlora` reads them (`randlora.quantized`).
Its 0.50 wheel runs both kinds on a CPU too (slowly), so CPU cells and tests need no GPU. The base's linear layers
are quantised, all but the output layer and the trainable_modules (as transformers' bitsandbytes loading does);
embeddings and norms stay in the precision's dtype. bitsandbytes is imported only when a layer is quantised.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

LIBRARY = "bitsandbytes"


@dataclass(frozen=True)
class QuantBackend:
    name: str
    description: str
    quantize: Callable[[nn.Linear], nn.Module] | None  # a float nn.Linear -> its quantised layer on the same device
    peft_flag: str | None  # the model attribute transformers sets for such a base; peft reads it to wrap the layer
    library: str | None = None  # a package that must be importable, else the cell is skipped
    devices: tuple[str, ...] = ("cpu", "cuda")  # where the library can run the layer

    def unavailable_reason(self) -> str | None:
        if self.library and importlib.util.find_spec(self.library) is None:
            return (
                f"quant {self.name!r} needs the {self.library!r} package, which is not installed "
                f"(pip install 'randlora-bench[quant]')"
            )
        return None


def _nf4(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    weight = linear.weight.detach()
    layer = bnb.nn.Linear4bit(
        linear.in_features, linear.out_features, bias=linear.bias is not None, compute_dtype=weight.dtype,
        compress_statistics=True, quant_type="nf4", device="meta",
    )  # fmt: skip
    # Params4bit quantises on its first move to a real device, here the one the float weight already sits on
    layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, compress_statistics=True, quant_type="nf4").to(
        weight.device
    )
    layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer


def _int8(linear: nn.Linear) -> nn.Module:
    import bitsandbytes as bnb

    weight = linear.weight.detach()
    layer = bnb.nn.Linear8bitLt(
        linear.in_features, linear.out_features, bias=linear.bias is not None, has_fp16_weights=False,
        threshold=0.0, device="meta",
    )  # fmt: skip
    # threshold 0: no fp16 outlier columns (LLM.int8()'s 6.0 decomposes them out, at a cost that hides the int8 speed)
    codes, scales, _ = bnb.functional.int8_vectorwise_quant(weight.to(torch.float16))
    layer.weight = bnb.nn.Int8Params(codes, requires_grad=False, has_fp16_weights=False, CB=codes, SCB=scales)
    layer.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
    return layer


QUANTS: dict[str, QuantBackend] = {
    q.name: q
    for q in (
        QuantBackend("none", "the precision's float dtype", None, None),
        QuantBackend("int8", "bitsandbytes LLM.int8() weights (Linear8bitLt)", _int8, "is_loaded_in_8bit", LIBRARY),
        QuantBackend("nf4", "bitsandbytes 4-bit NormalFloat, double-quantised scales (Linear4bit)", _nf4,
                     "is_loaded_in_4bit", LIBRARY),  # fmt: skip
    )
}


def quantizable(model: nn.Module, skip: tuple[str, ...]) -> list[str]:
    """Names of the nn.Linear layers a quantised base stores quantised: all but the output layer and `skip`
    (the trainable_modules' full names, and anything inside them)."""
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    return [
        name
        for name, m in model.named_modules()
        if type(m) is nn.Linear and m is not output and not any(name == s or name.startswith(s + ".") for s in skip)
    ]


def quantize_model(model: nn.Module, quant: str, skip: tuple[str, ...] = ()) -> nn.Module:
    """Replace `model`'s quantizable linear layers by `quant`'s layers in place, one at a time (each float weight
    is freed as soon as its layer is quantised), and mark the model as transformers would, for peft."""
    backend = QUANTS[quant]
    if backend.quantize is None:
        return model
    for name in quantizable(model, skip):
        replace(model, name, backend.quantize(model.get_submodule(name)))
    mark(model, quant)
    return model


def mark(model: nn.Module, quant: str) -> None:
    """Set the flag transformers sets on a model it loaded quantised (peft picks its bnb layers by it)."""
    flag = QUANTS[quant].peft_flag
    if flag is not None:
        setattr(model, flag, True)
        setattr(model, "is_quantized", True)


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
