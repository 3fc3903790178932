"""Regional compilation: each block of a model's repeated stack (a transformer's layers) compiled on its own.

A block is an element of an `nn.ModuleList` of two or more modules; blocks nested in an outer block are left to it.
`nn.Module.compile` compiles in place (names and state dict unchanged), and the blocks share their code, so dynamo
compiles one graph and reuses it for every block: the first step costs a fraction of compiling the whole model,
and the elementwise work around the matmuls (norms, rotary embedding, activations, the adapter's small kernels)
is fused all the same.
"""
from __future__ import annotations

from torch import nn


def repeated_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, block) of every outermost block of a repeated stack, in model order."""
    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if any(name.startswith(done + ".") for done, _ in found):
            continue
        found.extend((f"{name}.{i}" if name else str(i), block) for i, block in enumerate(module))
    return found


def compile_blocks(model: nn.Module) -> list[str]:
    """Compile every repeated block in place; returns their names."""
    blocks = repeated_blocks(model)
    for _, block in blocks:
        block.compile()
    return [name for name, _ in blocks]
