"""The sparse impl: its function and layer against the float64 formula, its kernel against torch, its storage.

The Triton kernel runs on this CPU under Triton's interpreter, which must be switched on before triton is first
imported; those checks therefore run in a child process with TRITON_INTERPRET=1 (`_in_interpreter`).
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import randlora
from randlora.functional import contraction_flops
from randlora.kernels.ternary import Ell, TernaryMatrix, triton_available
from randlora.layers.randlora_sparse import SparseRandLoRAFunction, SparseRandLoRALinear, choose_orders, step_macs

from .helpers import TARGETS, TinyMLP, randomize_, reference_delta

REPO = Path(__file__).resolve().parents[2]
SHAPES = [(19, 41, 5), (41, 23, 5), (16, 16, 3)]  # out > in with d % r != 0, in > out, square
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")


def _signs(shape, density: float, seed: int) -> torch.Tensor:
    """Random int8 ternary signs with P(±1) = density / 2 each."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(shape, generator=gen)
    return ((u < density / 2).to(torch.int8) - (u > 1 - density / 2).to(torch.int8))


def _decode(ell: Ell, K: int) -> torch.Tensor:
    """The dense (M, K) sign matrix an ELL layout stands for."""
    e = ell.entries.long()
    dense = torch.zeros(e.shape[0], K, dtype=torch.long)
    rows = torch.arange(e.shape[0]).unsqueeze(1).expand_as(e)
    nz = e != 0
    dense[rows[nz], e.abs()[nz] - 1] = e.sign()[nz]
    return dense


# --- the autograd function, every order, against the formula in float64 --------------------------------------

def _check_function_against_formula(in_f, out_f, r, materialize, rebuild, weight_route, with_weight, engine, rtol):
    torch.manual_seed(0)
    d, D = min(in_f, out_f), max(in_f, out_f)
    n = -(-d // r)
    signs, scale = _signs((D, n * r), 0.4, seed=1), 1.3
    A = torch.randn(r, d, dtype=torch.float64)
    W = torch.randn(out_f, in_f, dtype=torch.float64, requires_grad=True) if with_weight else None
    b = torch.randn(out_f, dtype=torch.float64, requires_grad=True) if with_weight else None
    lam = torch.randn(r, n, dtype=torch.float64, requires_grad=True)
    gam = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, in_f, dtype=torch.float64, requires_grad=True)
    B = TernaryMatrix.build(signs, scale, engine)
    y = SparseRandLoRAFunction.apply(x, W, b, A, B, lam, gam, 0.7, materialize, rebuild, weight_route)
    g = torch.randn_like(y)
    inputs = (x, lam, gam) + ((W, b) if with_weight else ())  # W, b: eager supports their gradients too
    got = torch.autograd.grad(y, inputs, g)

    dw = reference_delta(A, signs.double() * scale, lam, gam, 0.7, in_f, out_f)
    y_ref = x @ dw.T if W is None else x @ (W + dw).T + b
    want = torch.autograd.grad(y_ref, inputs, g)
    torch.testing.assert_close(y, y_ref, rtol=rtol, atol=rtol)
    for name, a, e in zip(("x", "lambda", "gamma", "W", "b"), got, want):
        torch.testing.assert_close(a, e, rtol=rtol, atol=rtol, msg=lambda m: f"dL/d{name}: {m}")


@pytest.mark.parametrize("in_f,out_f,r", SHAPES)
@pytest.mark.parametrize("materialize", [False, True])
@pytest.mark.parametrize("rebuild", [False, True])
@pytest.mark.parametrize("weight_route", [False, True])
@pytest.mark.parametrize("with_weight", [True, False])
def test_every_order_matches_float64_formula_with_dense_engine(in_f, out_f, r, materialize, rebuild, weight_route,
                                                               with_weight):
    _check_function_against_formula(in_f, out_f, r, materialize, rebuild, weight_route, with_weight, "dense", 1e-10)


# --- the layer on odd shapes, eager fallback and the sparse path, against the formula in float64 ---------------

@pytest.mark.parametrize("basis", ["sparse", "very_sparse"])
@pytest.mark.parametrize("contraction", ["auto", "tokens", "materialized"])
@pytest.mark.parametrize("accelerated", [False, True], ids=["cpu-fallback", "sparse-path"])
@pytest.mark.parametrize("n_bases", [None, 6])
def test_layer_matches_float64_formula_forward_and_gradients(basis, contraction, accelerated, n_bases, monkeypatch):
    # `accelerated` forces the CUDA path's code (TernaryMatrix bases, the sparse function) onto this CPU
    monkeypatch.setattr(SparseRandLoRALinear, "accelerated", staticmethod(lambda device: accelerated))
    torch.manual_seed(1)
    model = TinyMLP().double()
    config = randlora.RandLoRAConfig(
        r=5, alpha=7.0, impl="sparse", basis=basis, seed=3, target_modules=TARGETS, contraction=contraction,
        param_dtype="model", n_bases=n_bases,
    )
    randlora.adapt(model, config)
    randomize_(model, seed=2)
    layers = [getattr(model, name) for name in TARGETS]
    params = [p for layer in layers for p in (layer.randlora_lambda, layer.randlora_gamma)]
    x = torch.randn(3, 4, 19, dtype=torch.float64, requires_grad=True)
    y = model(x)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x] + params, g)

    h = x
    for layer in layers:
        bank = layer.bank
        A, B = bank.layer_slices(bank.A.double(), bank.B.double(), layer.d, layer.D)
        dw = reference_delta(A, B, layer.randlora_lambda, layer.randlora_gamma, layer.scaling, layer.in_features,
                             layer.out_features)
        h = torch.tanh(torch.nn.functional.linear(h, layer.base.weight + dw, layer.base.bias))
        with torch.no_grad():  # delta_weight() is float32 by contract
            torch.testing.assert_close(layer.delta_weight().double(), dw, rtol=1e-5, atol=1e-5)
    y_ref = model.head(h)
    want = torch.autograd.grad(y_ref, [x] + params, g)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)
    assert all(isinstance(layer.bases("cpu", torch.float64)[1], TernaryMatrix) == accelerated for layer in layers)


def test_dropout_path_on_the_sparse_path_trains(monkeypatch):
    monkeypatch.setattr(SparseRandLoRALinear, "accelerated", staticmethod(lambda device: True))
    model = torch.nn.Sequential(torch.nn.Linear(12, 9)).double()
    randlora.adapt(model, randlora.RandLoRAConfig(r=4, impl="sparse", basis="sparse", target_modules=["0"],
                                                  dropout=0.3, param_dtype="model"))
    randomize_(model)
    model.train()
    model(torch.randn(5, 12, dtype=torch.float64)).sum().backward()
    assert model[0].randlora_gamma.grad.abs().sum() > 0 and model[0].randlora_lambda.grad.abs().sum() > 0


# --- storage ------------------------------------------------------------------------------------------------

def _tensors(obj):
    """Every tensor inside a cache value (tensors, tuples, TernaryMatrix / Ell dataclasses)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            yield from _tensors(getattr(obj, name))


def test_cached_device_form_keeps_int8_signs_and_no_float_B(monkeypatch):
    monkeypatch.setattr(SparseRandLoRALinear, "accelerated", staticmethod(lambda device: True))
    model = TinyMLP()
    randlora.adapt(model, randlora.RandLoRAConfig(r=5, impl="sparse", basis="very_sparse", target_modules=TARGETS))
    randomize_(model)
    model(torch.randn(4, 19)).sum().backward()
    bank = model.up.bank
    cached = [t for value in bank._cache.values() for t in _tensors(value)]
    assert any(t.dtype == torch.int8 and t.shape == bank.B_sign.shape for t in cached)
    floats = [t for t in cached if t.is_floating_point()]
    assert floats and all(t.shape == bank.A.shape for t in floats), [tuple(t.shape) for t in floats]


def test_ell_layout_round_trips_signs_with_empty_and_full_rows():
    signs = _signs((37, 29), 0.3, seed=4)
    signs[5] = 0
    signs[6] = 1
    for s in (signs, signs.T):
        ell = Ell.from_signs(s)
        assert ell.entries.dtype == torch.int16 and ell.entries.shape[1] % 16 == 0
        assert torch.equal(ell.counts, (s != 0).sum(1).to(torch.int32))
        assert torch.equal(_decode(ell, s.shape[1]), s.long())


def test_ell_layout_uses_int32_when_columns_exceed_int16():
    signs = torch.zeros(3, 2**15 + 5, dtype=torch.int8)
    signs[0, -1], signs[2, 7] = -1, 1
    ell = Ell.from_signs(signs)
    assert ell.entries.dtype == torch.int32
    assert torch.equal(_decode(ell, signs.shape[1]), signs.long())


def test_gather_layout_is_smaller_than_a_bf16_basis_at_very_sparse_density():
    signs = _signs((512, 256), 2 / 512**0.5, seed=5)  # very_sparse at D_max = 512: ρ ≈ 9 %
    B = TernaryMatrix.build(signs, 1.0, "gather")
    ell_bytes = sum(e.entries.nbytes + e.counts.nbytes for e in (B.rows, B.cols))
    assert ell_bytes < signs.numel() * 2


# --- configuration and planning --------------------------------------------------------------------------------

@pytest.mark.parametrize("basis", ["uniform", "normal"])
def test_dense_basis_is_a_config_error_naming_the_allowed_bases(basis):
    with pytest.raises(randlora.ConfigError, match=rf"basis is '{basis}'.*'sparse', 'very_sparse'"):
        randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(impl="sparse", basis=basis, target_modules=TARGETS))


@pytest.mark.parametrize("in_f,out_f", [(4096, 4096), (4096, 14336), (14336, 4096)])
@pytest.mark.parametrize("tokens", [512, 4096, 16384])
def test_orders_with_dense_engine_never_cost_more_than_eager(in_f, out_f, tokens):
    d, D, K = min(in_f, out_f), max(in_f, out_f), 4096
    orders = choose_orders(tokens, d, D, K, 1.0, in_f <= out_f, True, True)
    ours = step_macs(tokens, d, D, K, 1.0, in_f <= out_f, *orders, True, True)
    eager = 2 * tokens * D * d + min(contraction_flops(tokens, in_f, out_f, K, True).values()) / 2
    assert ours <= eager
    if in_f != out_f and tokens == 4096:
        assert ours <= eager * 16.5 / 17  # the token route for dL/dAs saves ~1/17 on these shapes


def test_orders_follow_basis_cost_and_token_count():
    # a cheap B makes building W0 + ΔW (twice) the best; few tokens keep the token orders; many tokens take G
    assert choose_orders(4096, 4096, 4096, 4096, 0.05, True, True, True) == (True, True, False)
    assert choose_orders(16, 4096, 4096, 4096, 1.0, True, True, True) == (False, False, False)
    assert choose_orders(4096, 4096, 14336, 4096, 1.0, False, True, True) == (False, True, False)
    assert choose_orders(65536, 4096, 4096, 4096, 1.0, True, True, True)[2]
    assert choose_orders(65536, 4096, 4096, 4096, 1.0, True, True, True, materialize=False)[0] is False


# --- the Triton kernel under the interpreter -----------------------------------------------------------------

def _in_interpreter(check: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = f"from tests.randlora.test_sparse import {check}; {check}()"
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]


def kernel_checks() -> None:
    from randlora.kernels.ternary import ell_matmul

    torch.manual_seed(0)
    signs = _signs((37, 29), 0.3, seed=4)
    signs[5] = 0  # a row with no non-zeros
    signs[6] = -1  # a row with every entry set
    S = signs.float()
    X, add = torch.randn(29, 70), torch.randn(37, 70)
    rows, cols = Ell.from_signs(signs), Ell.from_signs(signs.T)
    torch.testing.assert_close(ell_matmul(rows, X, 0.7, add), add + 0.7 * S @ X)
    Xt = torch.randn(37, 9)
    torch.testing.assert_close(ell_matmul(cols, Xt, -1.5), -1.5 * S.T @ Xt)
    Y = torch.randn(70, 37)  # accumulate into a transposed view, in place
    want = Y.T + 2.0 * S @ X
    ell_matmul(rows, X, 2.0, Y.T, Y.T)
    torch.testing.assert_close(Y.T, want)
    Xb = X.bfloat16()
    torch.testing.assert_close(ell_matmul(rows, Xb, 0.7).float(), 0.7 * S @ Xb.float(), rtol=1e-2, atol=1e-2)
    zero = Ell.from_signs(torch.zeros(4, 29, dtype=torch.int8))
    assert torch.equal(ell_matmul(zero, X, 3.0, add[:4]), add[:4])


def function_checks() -> None:
    for (in_f, out_f, r), orders in itertools.product(SHAPES, itertools.product((False, True), repeat=3)):
        _check_function_against_formula(in_f, out_f, r, *orders, True, "gather", 1e-5)
    _check_function_against_formula(19, 41, 5, False, False, False, False, "gather", 1e-5)


@needs_triton
def test_gather_kernel_matches_torch_under_interpreter():
    _in_interpreter("kernel_checks")


@needs_triton
def test_every_order_matches_float64_formula_with_gather_engine_under_interpreter():
    _in_interpreter("function_checks")
