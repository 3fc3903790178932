"""RandLoRA, compiled: the eager math of `functional.py` under `torch.compile(fullgraph=True, dynamic=True)`.

fullgraph=True makes any graph break inside the adapter an error instead of a silent slowdown; dynamic=True
compiles one graph for every token count and layer shape, so a new batch size does not recompile.
"""
from __future__ import annotations

import functools

import torch

from ..functional import randlora_linear
from ..registry import register
from .randlora_eager import RandLoRALinear


@functools.cache
def compiled_randlora_linear():
    return torch.compile(randlora_linear, fullgraph=True, dynamic=True)


@register("randlora", "compiled")
class CompiledRandLoRALinear(RandLoRALinear):
    def linear_function(self):
        return compiled_randlora_linear()
