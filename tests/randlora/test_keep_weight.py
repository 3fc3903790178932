"""keep_weight: W0 + ΔW kept from forward for backward (no rebuild) gives the eager impl's values and gradients."""
from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import randlora
from randlora.errors import ConfigError
from randlora.functional import choose_contraction, contraction_flops, randlora_linear

from .helpers import TARGETS, TinyMLP, randomize_


class _CountMatmuls(TorchDispatchMode):
    """Counts the aten matmul calls (mm, addmm, bmm) run while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm"):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def _model(impl: str, keep_weight: bool, contraction: str = "materialized"):
    torch.manual_seed(1)
    model = TinyMLP().double()
    config = randlora.RandLoRAConfig(
        r=5, alpha=7.0, impl=impl, seed=3, target_modules=TARGETS, contraction=contraction, param_dtype="model",
        keep_weight=keep_weight,
    )
    randlora.adapt(model, config)
    randomize_(model, seed=2)
    return model


def _values_and_grads(model, x):
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(y, [x, *params], torch.ones_like(y))
    return y, grads


@pytest.mark.parametrize("impl", ["eager", "compiled"])
@pytest.mark.parametrize("contraction", ["materialized", "auto"])
def test_keep_weight_matches_the_rebuilding_eager_impl_in_float64(impl, contraction):
    x = torch.randn(3, 4, 19, dtype=torch.float64)
    y_ref, grads_ref = _values_and_grads(_model("eager", False, contraction), x)
    y, grads = _values_and_grads(_model(impl, True, contraction), x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    assert len(grads) == len(grads_ref)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("in_f,out_f,r", [(19, 41, 4), (41, 23, 5)])
def test_the_kept_weight_function_passes_gradcheck(in_f, out_f, r):
    torch.manual_seed(0)
    d, D = min(in_f, out_f), max(in_f, out_f)
    n = -(-d // r)
    A, B = torch.randn(r, d, dtype=torch.float64), torch.randn(D, n * r, dtype=torch.float64)
    W, b = torch.randn(out_f, in_f, dtype=torch.float64), torch.randn(out_f, dtype=torch.float64)
    lam = torch.randn(r, n, dtype=torch.float64, requires_grad=True)
    gam = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, in_f, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, l, g: randlora_linear(x, W, b, A, B, l, g, 1.3, True, True), (x, lam, gam)
    )


@pytest.mark.parametrize("in_f,out_f", [(19, 41), (41, 23)])
def test_backward_builds_no_weight_when_it_is_kept(in_f, out_f):
    """Without keep_weight backward runs one addmm (the rebuild of W0 + ΔW) more than with it."""
    r = 5
    d, D = min(in_f, out_f), max(in_f, out_f)
    n = -(-d // r)
    A, B = torch.randn(r, d, dtype=torch.float64), torch.randn(D, n * r, dtype=torch.float64)
    W = torch.randn(out_f, in_f, dtype=torch.float64)
    lam = torch.randn(r, n, dtype=torch.float64, requires_grad=True)
    gam = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, in_f, dtype=torch.float64, requires_grad=True)
    counted = {}
    for keep in (False, True):
        y = randlora_linear(x, W, None, A, B, lam, gam, 1.0, True, keep)
        with _CountMatmuls() as mode:
            y.sum().backward()
        counted[keep] = mode.calls
    assert counted[False].count("addmm") == 1 and counted[True].count("addmm") == 0
    assert len(counted[False]) == len(counted[True]) + 1


def test_keeping_the_weight_makes_the_materialised_order_cheaper_by_one_build():
    without = contraction_flops(4096, 4096, 14336, 4096, backward=True)
    kept = contraction_flops(4096, 4096, 14336, 4096, backward=True, keep_weight=True)
    assert without["materialized"] - kept["materialized"] == 2 * 14336 * 4096 * 4096
    assert without["tokens"] == kept["tokens"]
    # a shape where the rebuild decides the order: kept picks the materialised order at fewer tokens
    tokens = next(t for t in range(256, 65536, 256) if choose_contraction(t, 4096, 14336, 4096, True, True) == "materialized")
    assert choose_contraction(tokens, 4096, 14336, 4096, True) == "tokens"


@pytest.mark.parametrize("impl", ["sparse", "semi_structured"])
def test_keep_weight_is_refused_where_the_impl_cannot_keep_it(impl):
    with pytest.raises(ConfigError, match="keep_weight is true with impl"):
        randlora.RandLoRAConfig(impl=impl, keep_weight=True)


def test_keep_weight_must_be_a_bool():
    with pytest.raises(ConfigError, match="keep_weight is 'yes'; it must be true or false"):
        randlora.RandLoRAConfig(keep_weight="yes")


def test_compiled_graphs_keep_the_weight_without_being_asked():
    """Under torch.compile (inductor's min-cut partitioner) the backward of the materialised order has no rebuild:
    AOTAutograd merges it with the forward's build and saves W0 + ΔW, so keep_weight changes only the eager impl
    (measured: reports/perf3-h200/). Should torch stop doing this, the compiled impl rebuilds again and this fails."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.partitioners import min_cut_rematerialization_partition

    backward_ops = []

    def backward_compiler(gm, example_inputs):
        backward_ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward), bw_compiler=backward_compiler,
                           partition_fn=min_cut_rematerialization_partition)
    torch.manual_seed(0)
    A, B, W = torch.randn(4, 16), torch.randn(24, 16), torch.randn(24, 16)
    lam, gam = torch.randn(4, 4, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    x = torch.randn(8, 16, requires_grad=True)
    torch._dynamo.reset()
    f = torch.compile(lambda x, lam, gam: randlora_linear(x, W, None, A, B, lam, gam, 1.0, True), backend=backend)
    f(x, lam, gam).sum().backward()
    torch._dynamo.reset()
    assert backward_ops and not any("addmm" in op for op in backward_ops)
