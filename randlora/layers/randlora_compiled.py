"""RandLoRA, compiled: the eager math of `functional.py` under `torch.compile(fullgraph=True, dynamic=True)`.

fullgraph=True makes any graph break inside the adapter an error instead of a silent slowdown; dynamic=True
compiles one graph for every token count, so a new batch size does not recompile. A model still needs a few
graphs (one per dtype, orientation of the layer and contraction order), more than dynamo's default limit of 8
when several models share a process, hence the raised limit. Without autograd (evaluation, merging) the eager
function runs: compiling is for training steps. Inside a model that is itself under `torch.compile` the eager
function runs too, traced into the model's graph (a nested compile would break that graph at every layer).
"""
from __future__ import annotations

import functools

import torch

from ..functional import randlora_linear
from ..registry import register
from .randlora_eager import RandLoRALinear

RECOMPILE_LIMIT = 64


@functools.cache
def compiled_randlora_linear():
    compiled = torch.compile(randlora_linear, fullgraph=True, dynamic=True)

    @functools.wraps(randlora_linear)
    def run(*args):
        if not torch.is_grad_enabled() or torch.compiler.is_compiling():
            return randlora_linear(*args)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
            return compiled(*args)

    return run


@register("randlora", "compiled")
class CompiledRandLoRALinear(RandLoRALinear):
    def linear_function(self):
        return compiled_randlora_linear()
