"""Gradient accumulation with RandLoRA's basis products paid once per optimizer step.

    with randlora.accumulation_window(model):
        for batch in micro_batches:
            loss(model, batch).backward()
    optimizer.step()

λ and γ do not change between the micro-batches of one optimizer step, so a layer configured with
`accumulate="window"` builds W0 + ΔW once when the window opens, runs every forward as one GEMM with it, lets
autograd accumulate G = dL/d(W0 + ΔW) over the micro-batches, and projects G onto λ and γ once when the window
closes (functional.window_weights / window_scaling_grads). Layers of one shape share A and B, so each such group
opens and closes as one batch: a few kernels per group plus one GEMM per layer, not a dozen small kernels and an
autograd call per layer (at Llama-1.1B × 4 micro-batches on an H200 that took the step from 509.5 to 423.2 ms,
reports/perf3-h200/). Per layer and optimizer step of m micro-batches of T tokens:

    per micro-batch (eager, materialised order)   6·T·D·d + 6·D·d·K     (build, rebuild, Bᵀ G every time)
    window                                         6·T·D·d per micro-batch + 4·D·d·K per window

so the extra FLOPs per token fall towards full fine-tuning's 6·D·d as m grows. The price is memory: the layer
holds W0 + ΔW and its gradient (two weight-sized tensors in the compute dtype) for the whole window, and G is
accumulated in that dtype (as full fine-tuning accumulates its gradients).

Layers with `accumulate="micro_batch"` (the default) and other methods ignore the window; a window whose body
raises drops the accumulated G without touching .grad. Windows do not nest.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from .model import adapter_layers


@contextlib.contextmanager
def accumulation_window(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[None]:
    """One optimizer step's worth of micro-batches. `dtype`: what W0 + ΔW is built in (None: the frozen weight's
    dtype; under autocast pass autocast's, e.g. torch.bfloat16)."""
    groups: dict[tuple, list] = {}
    for _, layer in adapter_layers(model):
        key = layer.window_key(dtype)
        if key is not None:
            groups.setdefault((type(layer).open_windows, type(layer).close_windows, key), []).append(layer)
    opened = []
    try:
        for (open_windows, close_windows, _), layers in groups.items():
            open_windows(layers, dtype)
            opened.append((close_windows, layers))
        yield
    except BaseException:
        for close_windows, layers in opened:
            close_windows(layers, project=False)
        raise
    for close_windows, layers in opened:
        close_windows(layers, project=True)
