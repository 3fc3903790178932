"""Microbenchmarks: forward + backward of one adapted nn.Linear, for every adapter layer.

pyproject's addopts pass --benchmark-disable, so a plain `python -m pytest` runs each body once as a smoke test.
To measure, save, and compare:

    python -m pytest tests/benchmarks --benchmark-enable --benchmark-json=bench-a.json
    ... change something ...
    python -m pytest tests/benchmarks --benchmark-enable --benchmark-compare=bench-a.json
    pytest-benchmark compare bench-a.json bench-b.json --columns=median,iqr,rounds   # two saved files

or let pytest-benchmark keep numbered runs in .benchmarks/ (git-ignored) and compare against one of them:

    python -m pytest tests/benchmarks --benchmark-enable --benchmark-autosave
    python -m pytest tests/benchmarks --benchmark-enable --benchmark-compare=0001 --benchmark-compare-fail=median:10%

(pytest-benchmark 5.2 fails with KeyError 'stats' when `compare` is given the same file twice.)

The shapes are tiny so that the suite stays quick on a CPU; `python -m bench.tools.layer_bench` measures the real
(4096-wide) shapes on a GPU.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import randlora

TOKENS = 256
SHAPES = {"wide": (48, 80), "narrow": (80, 48)}  # in < out and in > out: the two orientations of the update
LAYERS = {
    "full": randlora.FullFinetuneConfig(),
    "lora": randlora.LoRAConfig(r=8, alpha=16, target_modules=["layer"]),
    "randlora-eager": randlora.RandLoRAConfig(r=8, impl="eager", target_modules=["layer"]),
    "randlora-compiled": randlora.RandLoRAConfig(r=8, impl="compiled", target_modules=["layer"]),
    "randlora-sparse": randlora.RandLoRAConfig(r=8, impl="sparse", basis="sparse", target_modules=["layer"]),
}
HAS_PEFT = importlib.util.find_spec("peft") is not None


class Wrapped(nn.Module):
    """adapt() and peft both select modules by name: one Linear called `layer`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.layer = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def _peft(kind: str, module: nn.Module) -> nn.Module:
    import peft

    config = (
        peft.LoraConfig(r=8, lora_alpha=16, target_modules=["layer"])
        if kind == "lora"
        else peft.RandLoraConfig(r=8, target_modules=["layer"])
    )
    return peft.get_peft_model(module, config)


def forward_backward(module: nn.Module, x: torch.Tensor) -> None:
    module(x).square().mean().backward()


def _bench(benchmark, module: nn.Module, in_features: int) -> None:
    x = torch.randn(TOKENS, in_features, generator=torch.Generator().manual_seed(0), requires_grad=True)
    forward_backward(module, x)  # compile / first-call costs stay out of the timed rounds
    benchmark(forward_backward, module, x)
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("layer", list(LAYERS))
def test_forward_backward(benchmark, layer, shape):
    in_features, out_features = SHAPES[shape]
    torch.manual_seed(0)
    module = randlora.adapt(Wrapped(in_features, out_features), LAYERS[layer])
    _bench(benchmark, module, in_features)


@pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (pip install peft)")
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("kind", ["lora", "randlora"])
def test_peft_forward_backward(benchmark, kind, shape):
    in_features, out_features = SHAPES[shape]
    torch.manual_seed(0)
    _bench(benchmark, _peft(kind, Wrapped(in_features, out_features)), in_features)
