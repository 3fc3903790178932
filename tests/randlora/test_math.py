"""Every RandLoRA impl against ΔW computed straight from the formula in float64: forward and all gradients."""
from __future__ import annotations

import pytest
import torch

import randlora
from randlora.functional import choose_contraction, contraction_flops, randlora_linear

from .helpers import TARGETS, TinyMLP, randomize_, reference_delta

IMPLS = [
    ("eager", "uniform"), ("compiled", "uniform"), ("sparse", "sparse"), ("eager", "very_sparse"),
    ("semi_structured", "sparse_2_4"), ("sparse", "sparse_2_4"),
]


def _reference_forward(model, x):
    """The adapted model's function with each adapted layer replaced by x (W0 + ΔW_ref)ᵀ + b in float64."""
    h = x
    for name in ("up", "mid", "down"):
        layer = getattr(model, name)
        A, B = layer.bases("cpu", torch.float64)
        dw = reference_delta(A, B, layer.randlora_lambda, layer.randlora_gamma, layer.scaling, layer.in_features, layer.out_features)
        w = layer.base.weight.double() + dw
        b = None if layer.base.bias is None else layer.base.bias.double()
        h = torch.tanh(torch.nn.functional.linear(h, w, b))
    return model.head(h)


@pytest.mark.parametrize("impl,basis", IMPLS)
@pytest.mark.parametrize("contraction", ["tokens", "materialized"])
@pytest.mark.parametrize("n_bases", [None, 2, 6], ids=["n-full", "n2-all-capped", "n6-mid-capped"])
def test_impl_matches_float64_formula_forward_and_gradients(impl, basis, contraction, n_bases):
    """r = 5 on d = 19, 41, 23 gives 4, 9, 5 bases; n_bases = 2 caps every layer, 6 only the square one."""
    torch.manual_seed(1)
    model = TinyMLP().double()
    config = randlora.RandLoRAConfig(
        r=5, alpha=7.0, impl=impl, basis=basis, seed=3, target_modules=TARGETS, contraction=contraction,
        param_dtype="model", n_bases=n_bases,
    )
    randlora.adapt(model, config)
    full_rank_n = {"up": 4, "mid": 9, "down": 5}
    expected_n = {name: n if n_bases is None else min(n, n_bases) for name, n in full_rank_n.items()}
    assert {name: getattr(model, name).randlora_lambda.shape[1] for name in TARGETS} == expected_n
    randomize_(model, seed=2)
    x = torch.randn(3, 4, 19, dtype=torch.float64, requires_grad=True)
    y = model(x)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x] + [getattr(model, n).randlora_lambda for n in TARGETS] + [getattr(model, n).randlora_gamma for n in TARGETS], g)

    ref_model = model
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = _reference_forward(ref_model, x_ref)
    ref_grads = torch.autograd.grad(y_ref, [x_ref] + [getattr(model, n).randlora_lambda for n in TARGETS] + [getattr(model, n).randlora_gamma for n in TARGETS], g)

    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("in_f,out_f,r", [(19, 41, 4), (41, 23, 5), (16, 16, 3)])
@pytest.mark.parametrize("materialize", [False, True])
def test_autograd_function_passes_gradcheck(in_f, out_f, r, materialize):
    torch.manual_seed(0)
    d, D = min(in_f, out_f), max(in_f, out_f)
    n = -(-d // r)
    A, B = torch.randn(r, d, dtype=torch.float64), torch.randn(D, n * r, dtype=torch.float64)
    W, b = torch.randn(out_f, in_f, dtype=torch.float64), torch.randn(out_f, dtype=torch.float64)
    lam = torch.randn(r, n, dtype=torch.float64, requires_grad=True)
    gam = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, in_f, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, l, g: randlora_linear(x, W, b, A, B, l, g, 1.3, materialize), (x, lam, gam))
    # the adapter-only form (weight None), used for dropout on the adapter path
    assert torch.autograd.gradcheck(lambda x, l, g: randlora_linear(x, None, None, A, B, l, g, 1.3, False), (x, lam, gam))


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_low_precision_forward_is_close_to_float64(dtype, rtol):
    torch.manual_seed(0)
    lin = torch.nn.Linear(41, 23).to(dtype)
    model = torch.nn.Sequential(lin)
    randlora.adapt(model, randlora.RandLoRAConfig(r=5, alpha=10.0, target_modules=["0"]))
    randomize_(model)
    layer = model[0]
    x = torch.randn(7, 41).to(dtype)
    A, B = layer.bases("cpu", torch.float64)
    w_ref = layer.base.weight.double() + reference_delta(A, B, layer.randlora_lambda, layer.randlora_gamma, layer.scaling, 41, 23)
    y_ref = x.double() @ w_ref.T + layer.base.bias.double()
    y = model(x)
    assert y.dtype == dtype
    err = (y.double() - y_ref).norm() / y_ref.norm()
    assert err < rtol


def test_contraction_choice_follows_flop_count():
    # few tokens: the token path is cheaper; many tokens: building ΔW once is cheaper
    assert choose_contraction(16, 4096, 4096, 4096, backward=True) == "tokens"
    assert choose_contraction(65536, 4096, 4096, 4096, backward=True) == "materialized"
    for tokens in (1, 100, 4096, 10**6):
        flops = contraction_flops(tokens, 4096, 14336, 4096, backward=True)
        assert choose_contraction(tokens, 4096, 14336, 4096, True) == min(flops, key=lambda k: (flops[k], k != "tokens"))


def test_dropout_path_trains_and_matches_formula_in_eval():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 9)).double()
    randlora.adapt(model, randlora.RandLoRAConfig(r=4, target_modules=["0"], dropout=0.3, param_dtype="model"))
    randomize_(model)
    x = torch.randn(5, 12, dtype=torch.float64)
    model.train()
    model(x).sum().backward()
    assert model[0].randlora_gamma.grad is not None and model[0].randlora_gamma.grad.abs().sum() > 0
    model.eval()
    layer = model[0]
    A, B = layer.bases("cpu", torch.float64)
    w = layer.base.weight + reference_delta(A, B, layer.randlora_lambda, layer.randlora_gamma, layer.scaling, 12, 9)
    torch.testing.assert_close(model(x), x @ w.T + layer.base.bias)
