"""The compiled impl: one graph with no break inside the adapter, no recompilation when only the batch changes."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

import randlora
from randlora.functional import randlora_linear
from randlora.layers import randlora_compiled
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


def test_a_model_under_torch_compile_traces_every_impl_into_one_graph_and_matches_eager():
    """A user compiles the whole model: the adapter must not break its graph (the compiled impl's own compile
    steps aside there), and the compiled model computes what the eager one does."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    x = torch.randn(4, 7, 19)
    for impl in ("eager", "compiled"):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(1)
        net = torch.nn.Sequential(torch.nn.Linear(19, 23), torch.nn.GELU(), torch.nn.Linear(23, 11))
        model = randlora.adapt(net, randlora.RandLoRAConfig(r=3, impl=impl, target_modules=["0", "2"]))
        with torch.no_grad():
            for layer in (model[0], model[2]):
                layer.randlora_lambda.normal_()
        eager_out = model(x)
        eager_out.square().sum().backward()
        eager_grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad()
        out = torch.compile(model)(x)
        out.square().sum().backward()
        assert not counters["graph_break"], f"{impl}: {dict(counters['graph_break'])}"
        torch.testing.assert_close(out, eager_out, rtol=1e-4, atol=1e-4)
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        for grad, expected in zip(grads, eager_grads):
            torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4)


class _Block(torch.nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class _Stack(torch.nn.Module):
    """A transformer's shape: a repeated stack of blocks, then a head outside it."""

    def __init__(self, d: int = 12) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block(d) for _ in range(3))
        self.head = torch.nn.Linear(d, 5)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def _stack(impl: str, targets=("up", "head")) -> torch.nn.Module:
    torch.manual_seed(0)
    model = randlora.adapt(_Stack().double(), randlora.RandLoRAConfig(r=3, impl=impl, target_modules=list(targets)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "randlora_lambda" in name:
                p.normal_()
    return model


def _loss_and_grads(model, x):
    y = model(x)
    y.square().sum().backward()
    return y.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_the_compiled_impl_compiles_each_block_holding_an_adapter_and_matches_eager_in_float64():
    from torch._dynamo.utils import counters

    x = torch.randn(4, 7, 12, dtype=torch.float64)
    expected_y, expected_grads = _loss_and_grads(_stack("eager"), x)
    for outer in (None, torch.compile):  # alone, and inside a model that is itself compiled (`compile: true`)
        torch._dynamo.reset()
        counters.clear()
        model = _stack("compiled")
        assert all(block._compiled_call_impl is not None for block in model.blocks)
        assert all(block.up.in_compiled_block for block in model.blocks) and not model.head.in_compiled_block
        y, _ = _loss_and_grads(outer(model) if outer else model, x)
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert not counters["graph_break"]
        torch.testing.assert_close(y, expected_y, rtol=1e-12, atol=1e-12)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-12, atol=1e-12)


def test_blocks_without_an_adapter_are_not_compiled():
    model = _stack("compiled", targets=["head"])
    assert all(block._compiled_call_impl is None for block in model.blocks)


def test_the_compiled_impl_warns_when_a_kv_cache_would_recompile_every_block():
    model = _Stack()
    model.config = type("Config", (), {"use_cache": True})()
    with pytest.warns(UserWarning, match="use_cache=True: a KV cache built during training"):
        randlora.adapt(model, randlora.RandLoRAConfig(r=3, impl="compiled", target_modules=["up"]))


@pytest.fixture
def fresh_compiled_function():
    """The process-wide compiled function, rebuilt before and after the test (no graphs, no fallback carried over)."""
    compiled_randlora_linear.cache_clear()
    torch._dynamo.reset()
    yield
    compiled_randlora_linear.cache_clear()
    torch._dynamo.reset()


@pytest.mark.slow
def test_new_layer_shapes_reuse_one_compiled_graph(fresh_compiled_function):
    """nn.Linear(32 + 8k, 96 + 16k): each new shape used to recompile (γ's static shape pinned d) until dynamo's
    limit raised FailOnRecompileLimitHit at the 65th shape."""
    for k in range(4):
        torch.manual_seed(k)
        model = torch.nn.Sequential(torch.nn.Linear(32 + 8 * k, 96 + 16 * k))
        randlora.adapt(model, randlora.RandLoRAConfig(r=8, impl="compiled", target_modules=["0"]))
        with torch._dynamo.config.patch(error_on_recompile=k > 0):
            model(torch.randn(3, 32 + 8 * k)).sum().backward()
        assert model[0].randlora_lambda.grad is not None


@pytest.mark.slow
def test_reaching_the_recompile_limit_warns_once_and_runs_eagerly(fresh_compiled_function, monkeypatch):
    monkeypatch.setattr(randlora_compiled, "RECOMPILE_LIMIT", 1)
    fn = compiled_randlora_linear()
    fn(*_layer_args(5), False).sum().backward()  # the one graph the limit allows
    args64 = tuple(a.double() if isinstance(a, torch.Tensor) else a for a in _layer_args(6))  # needs a second graph
    with pytest.warns(UserWarning, match=r"reached dynamo's recompile limit \(1 graphs\).*run the eager function") as seen:
        y = fn(*args64, False)
        fn(*args64, True)
    assert len(seen) == 1
    torch.testing.assert_close(y, randlora_linear(*args64, False), rtol=0, atol=0)
