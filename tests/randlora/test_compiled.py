"""The compiled impl: one graph with no break inside the adapter, no recompilation when only the batch changes."""
from __future__ import annotations

import torch
import torch._dynamo

import randlora
from randlora.functional import randlora_linear
from randlora.layers.randlora_compiled import compiled_randlora_linear


def _layer_args(tokens: int):
    torch.manual_seed(tokens)
    lin = torch.nn.Linear(19, 41)
    model = randlora.adapt(torch.nn.Sequential(lin), randlora.RandLoRAConfig(r=5, target_modules=["0"]))
    layer = model[0]
    A, B = layer.bases("cpu", torch.float32)
    x = torch.randn(tokens, 19)
    return (x, lin.weight, lin.bias, A, B, layer.randlora_lambda, layer.randlora_gamma, layer.scaling)


def test_adapter_function_compiles_to_one_graph_without_breaks():
    for materialize in (False, True):
        explanation = torch._dynamo.explain(randlora_linear)(*_layer_args(6), materialize)
        assert explanation.graph_break_count == 0
        assert explanation.graph_count == 1


def test_changing_the_batch_does_not_recompile():
    fn = compiled_randlora_linear()
    fn(*_layer_args(8), False).sum().backward()  # first call compiles (dynamic shapes)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for tokens in (3, 17, 40):
            y = fn(*_layer_args(tokens), False)
            y.sum().backward()
            assert y.shape == (tokens, 41)
