"""A cell's base with quantised linear layers, built without ever holding the whole model in float.

A preset is built on the meta device (no memory), then materialised one repeated block at a time on the cell's
device: the block's parameters are allocated and randomly initialised in the precision's dtype, its linear layers
quantised (`bench/spec/quant.py`), and the float weights dropped before the next block. The peak is the packed
model plus one block in float: `llama-70b` with nf4 needs about 37 GB, never the 140 GB of its bf16 weights.
Everything outside the blocks (embeddings, final norm, output layer) is materialised last, in float.

Random weights, as the presets have: normal(0, initializer_range) for matrices (linear and embedding weights),
ones for vectors named `weight` (norms), zeros for biases. Drawn block by block on the device from the cell's seed,
they are not the float preset's weights, which transformers initialises in another order; the time and memory of a
step do not depend on which random weights the base holds.

A task's own model, or an `hf:` model, is built in float by its own code and quantised in place (small models).
"""

from __future__ import annotations

import torch
from torch import nn

from randlora import regional

from bench.core.errors import BenchError
from bench.spec import methods, presets, quant


def build(cell, task, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module, object]:
    """(model, info) for a cell with `quant` other than none, its linear layers quantised on `device`."""
    if task.build_model is not None or presets.is_hf(cell.model):
        if task.build_model is not None:
            model, info = task.build_model(cell, device, dtype)
        else:
            model, info = presets.build(cell.model, dtype, device, cell.trust_remote_code)
        skip = methods.resolve_modules(model, cell.trainable_modules, "trainable_modules", linear_only=False)
        return quant.quantize_model(model, cell.quant, skip), info
    return build_preset(cell.model, cell.quant, dtype, device, cell.trainable_modules)


def build_preset(
    name: str, kind: str, dtype: torch.dtype, device: torch.device, trainable: tuple[str, ...] = ()
) -> tuple[nn.Module, object]:
    """Preset `name` with random weights, its linear layers stored as `kind`, materialised block by block."""
    import transformers

    preset = presets.PRESETS[name]
    config = getattr(transformers, preset.spec.config_class)(**preset.config, attn_implementation="sdpa")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            net = getattr(transformers, preset.spec.model_class)(config)
    finally:
        torch.set_default_dtype(previous)
    skip = methods.resolve_modules(net, trainable, "trainable_modules", linear_only=False)
    to_quantize = quant.quantizable(net, skip)
    std = getattr(config, "initializer_range", 0.02)
    # tied weights stay tied: id of a meta parameter held twice -> its materialised one (only those are kept here,
    # so that every other float weight is freed as soon as its layer is quantised)
    seen: set[int] = set()
    tied = {id(p) for _, p in net.named_parameters(remove_duplicate=False) if id(p) in seen or seen.add(id(p))}
    made: dict[int, nn.Parameter] = {}
    for prefix, block in regional.repeated_blocks(net):
        _materialize(block, device, std, made, tied)
        _quantize(net, [n for n in to_quantize if n.startswith(prefix + ".")], kind)
    _materialize(net, device, std, made, tied)
    _quantize(net, [n for n in to_quantize if type(net.get_submodule(n)) is nn.Linear], kind)  # outside the blocks
    _rebuild_buffers(net, config, device)
    quant.mark(net, kind)
    return net, presets.model_info(net.config, preset.spec.head, preset.spec.inputs)


@torch.no_grad()
def _materialize(module: nn.Module, device: torch.device, std: float, made: dict, tied: set) -> None:
    """Allocate every meta parameter of `module` on `device` and initialise it (the module docstring's rule); a
    parameter in `tied` is made once and recorded in `made`, so its other holder gets the same tensor."""
    for sub in module.modules():
        for key, param in list(sub._parameters.items()):
            if param is None or not param.is_meta:
                continue
            if id(param) in made:
                sub._parameters[key] = made[id(param)]
                continue
            value = torch.empty(param.shape, dtype=param.dtype, device=device)
            if key == "bias":
                value.zero_()
            elif value.dim() == 1:
                value.fill_(1.0)
            else:
                value.normal_(0.0, std)
            sub._parameters[key] = nn.Parameter(value, requires_grad=param.requires_grad)
            if id(param) in tied:
                made[id(param)] = sub._parameters[key]


def _quantize(net: nn.Module, names: list[str], kind: str) -> None:
    for name in names:
        quant.replace(net, name, quant.QUANTS[kind].quantize(net.get_submodule(name)))


def _rebuild_buffers(net: nn.Module, config, device: torch.device) -> None:
    """Buffers computed at construction (rotary inverse frequencies) are meta still: construct their modules again
    on `device` (transformers' rotary embeddings are built from the config alone)."""
    for name, module in list(net.named_modules()):
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        try:
            with torch.device(device):
                fresh = type(module)(config)
        except TypeError:
            raise BenchError(
                f"module {name!r} ({type(module).__name__}) holds buffers computed at construction that cannot be "
                "rebuilt on the device; build this model with quant: none."
            ) from None
        quant.replace(net, name, fresh)
    left = [n for n, b in net.named_buffers() if b.is_meta] + [n for n, p in net.named_parameters() if p.is_meta]
    if left:
        raise BenchError(f"tensor {left[0]!r} is still on the meta device after the quantised build; use quant: none.")
