"""RandLoRA, compiled: the eager math of `functional.py` under `torch.compile`, by regional compilation.

Adapting a model compiles, in place, each block of its repeated stack (`randlora.regional`: a transformer's decoder
layers) that holds an adapted layer; inside such a block the eager function is traced into the block's graph, so
the adapter's small kernels fuse with the block's own elementwise work and one graph serves every block. Measured
on an H200 (Llama 1.1B shapes, batch 8 × 1024, `reports/compiled-impl-h200/`): 1.79× the eager impl, where
compiling the adapter function alone, layer by layer, ran 0.82× (a dynamo-guarded call per layer costs more host
time than its fusions save).

Traced into a block, the materialised order keeps W0 + ΔW from forward for backward instead of rebuilding it
(AOTAutograd merges the backward's rebuild with the forward's build and its min-cut partitioner saves the result):
what `RandLoRAConfig(keep_weight=True)` asks of the eager impl, here without asking, for one weight-sized tensor per
such layer held from forward to backward (tests/randlora/test_keep_weight.py; reports/perf3-h200/).

Adapted layers outside any repeated block (a lone layer, a head) run that per-layer compiled function:
`torch.compile(fullgraph=True, dynamic=True)`; fullgraph=True makes a graph break inside the adapter an error
instead of a silent slowdown, and dynamic=True compiles one graph for every token count and every layer shape.
That needs λ and γ traced with symbolic shapes too: dynamo treats an nn.Parameter's shape as static by default
(`force_parameter_static_shapes`), and γ (n, d) broadcast against A (r, d) then pinned d, so each new layer shape
compiled a new graph until dynamo's recompile limit raised `FailOnRecompileLimitHit` (64 shapes, 11 min on a
CPU). A model still needs a few graphs (one per dtype, orientation of the layer and contraction order), more than
dynamo's default limit of 8 when several models share a process, hence the raised limit; should a process still
reach it, the function warns once and runs eagerly from then on. Without autograd (evaluation, merging) and on the
meta device it runs eagerly. Inside a model that is itself under `torch.compile` the eager function runs too, traced into the model's
graph (a nested compile would break that graph at every layer).
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from .. import regional
from ..functional import randlora_linear
from ..registry import register
from .randlora_eager import RandLoRALinear

RECOMPILE_LIMIT = 64


@functools.cache
def compiled_randlora_linear():
    """randlora_linear compiled once for every shape; eager (after one warning) once the recompile limit is hit."""
    compiled = torch.compile(randlora_linear, fullgraph=True, dynamic=True)
    fell_back = False

    @functools.wraps(randlora_linear)
    def run(*args):
        nonlocal fell_back
        if fell_back or not torch.is_grad_enabled() or args[0].is_meta:  # meta: shapes only, nothing to speed up
            return randlora_linear(*args)
        try:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, force_parameter_static_shapes=False):
                return compiled(*args)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            fell_back = True
            warnings.warn(
                f"the compiled RandLoRA function reached dynamo's recompile limit ({RECOMPILE_LIMIT} graphs) in this "
                "process; adapted layers outside repeated blocks run the eager function from now on.",
                stacklevel=2,
            )
            return randlora_linear(*args)

    return run


@register("randlora", "compiled")
class CompiledRandLoRALinear(RandLoRALinear):
    in_compiled_block = False  # set by adapt_model on the layers whose block it compiled

    @classmethod
    def adapt_model(cls, model: nn.Module, config, targets: dict[str, nn.Module]) -> None:
        super().adapt_model(model, config, targets)
        compiled_any = False
        for _, block in regional.repeated_blocks(model):
            layers = [m for m in block.modules() if isinstance(m, cls)]
            if layers:
                block.compile()
                for layer in layers:
                    layer.in_compiled_block = True
                compiled_any = True
        if compiled_any and getattr(getattr(model, "config", None), "use_cache", False):
            warnings.warn(
                "the model's config has use_cache=True: a KV cache built during training makes each compiled block "
                "compile a graph of its own (and, past dynamo's recompile limit, run eagerly); set "
                "model.config.use_cache = False for training.",
                stacklevel=3,
            )

    def linear_function(self):
        if self.in_compiled_block or torch.compiler.is_compiling():
            return randlora_linear  # traced into the enclosing graph
        return compiled_randlora_linear()
