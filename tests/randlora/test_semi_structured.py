"""The 2:4 ternary basis and its semi-structured impl: the layout, the values, the eager reference on a CPU, and
the sparse tensor cores against it where a CUDA GPU has them."""
from __future__ import annotations

import math

import pytest
import torch

import randlora
from randlora.bases import BasisBank
from randlora.kernels.semi_structured import SemiStructuredBasis, is_2_4, unavailable_reason

from .helpers import TARGETS, TinyMLP, randomize_


@pytest.mark.parametrize("r,d_max,D_max", [(8, 16, 36), (32, 96, 256)])
def test_sparse_2_4_basis_has_two_non_zeros_in_every_group_of_four_along_rows_and_columns(r, d_max, D_max):
    bank = BasisBank(r=r, d_max=d_max, D_max=D_max, basis="sparse_2_4", seed=0)
    for signs in (bank.A_sign, bank.B_sign):
        assert is_2_4(signs) and is_2_4(signs.T.contiguous())
        assert set(signs.unique().tolist()) == {-1, 0, 1}
    for dense, signs in ((bank.A, bank.A_sign), (bank.B, bank.B_sign)):  # exactly ternary: ±sqrt(2) and 0
        torch.testing.assert_close(dense, signs.float() * math.sqrt(2.0), rtol=0, atol=0)


def test_sparse_2_4_basis_is_balanced_and_varies_with_the_seed():
    a = BasisBank(r=16, d_max=64, D_max=256, basis="sparse_2_4", seed=0)
    b = BasisBank(r=16, d_max=64, D_max=256, basis="sparse_2_4", seed=1)
    assert int((a.B_sign == 1).sum()) == pytest.approx(int((a.B_sign == -1).sum()), rel=0.05)
    assert not torch.equal(a.B_sign, b.B_sign)
    assert torch.equal(a.B_sign, BasisBank(r=16, d_max=64, D_max=256, basis="sparse_2_4", seed=0).B_sign)


def test_is_2_4_rejects_other_layouts():
    assert not is_2_4(torch.tensor([[1, 1, 1, 0]], dtype=torch.int8))
    assert not is_2_4(torch.tensor([[1, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.int8))
    assert not is_2_4(torch.tensor([[1, 1, 0]], dtype=torch.int8))


def test_semi_structured_impl_needs_the_2_4_basis():
    with pytest.raises(randlora.ConfigError, match="impl 'semi_structured' needs the 2:4 basis; set basis to 'sparse_2_4'"):
        randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(r=4, impl="semi_structured", target_modules=TARGETS))


@pytest.mark.parametrize("device,dtype,reason", [
    ("cpu", torch.bfloat16, "need a CUDA GPU; this tensor is on 'cpu'"),
    ("meta", torch.bfloat16, "need a CUDA GPU"),
])
def test_building_the_semi_structured_basis_off_cuda_is_refused_in_one_sentence(device, dtype, reason):
    assert reason in unavailable_reason(device, dtype)
    B = torch.zeros(64, 64, dtype=dtype, device=device)
    with pytest.raises(RuntimeError, match=reason):
        SemiStructuredBasis.build(B)


def test_on_a_cpu_the_semi_structured_layer_is_the_eager_layer():
    torch.manual_seed(0)
    models = {}
    for impl in ("eager", "semi_structured"):
        models[impl] = randlora.adapt(TinyMLP().double(), randlora.RandLoRAConfig(
            r=4, impl=impl, basis="sparse_2_4", target_modules=TARGETS, param_dtype="model"))
        randomize_(models[impl], seed=1)
        torch.manual_seed(0)
    models["semi_structured"].load_state_dict(models["eager"].state_dict())
    x = torch.randn(3, 5, 19, dtype=torch.float64)
    outs = {impl: m(x) for impl, m in models.items()}
    torch.testing.assert_close(outs["semi_structured"], outs["eager"], rtol=0, atol=0)


needs_sparse_cores = pytest.mark.skipif(
    not torch.cuda.is_available() or unavailable_reason("cuda", torch.bfloat16) is not None,
    reason="2:4 semi-structured products need a CUDA GPU of compute capability >= 8.0 (none here)",
)


@needs_sparse_cores
@pytest.mark.parametrize("shape", [(256, 512), (512, 256)])
def test_semi_structured_layer_matches_eager_in_bf16_forward_and_gradients(shape):
    in_f, out_f = shape
    results = {}
    for impl in ("eager", "semi_structured"):
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).cuda().to(torch.bfloat16)
        model = randlora.adapt(base, randlora.RandLoRAConfig(r=32, impl=impl, basis="sparse_2_4",
                                                             target_modules=["0"], contraction="materialized"))
        with torch.no_grad():
            model[0].randlora_lambda.normal_(generator=torch.Generator("cuda").manual_seed(1))
        x = torch.randn(2, 64, in_f, device="cuda", dtype=torch.bfloat16, generator=torch.Generator("cuda").manual_seed(2))
        y = model(x)
        y.float().square().mean().backward()
        results[impl] = (y, model[0].randlora_lambda.grad, model[0].randlora_gamma.grad)
    for got, want in zip(results["semi_structured"], results["eager"]):
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.float().abs().max().item())


@pytest.fixture
def emulated_sparse_cores(monkeypatch):
    """The 2:4 path on a CPU in float64: "compressed" operands that are the dense B and Bᵀ, so the semi-structured
    autograd function and the order dispatch run here exactly, and `calls` counts which function each call took."""
    from randlora.layers import randlora_semi

    calls = {"semi": 0, "dense": 0}
    semi_apply, dense = randlora_semi.SemiStructuredRandLoRAFunction.apply, randlora_semi.randlora_linear

    def counted_semi(*args):
        calls["semi"] += 1
        return semi_apply(*args)

    def counted_dense(*args):
        calls["dense"] += 1
        return dense(*args)

    monkeypatch.setattr(randlora_semi, "unavailable_reason", lambda device, dtype: None)
    monkeypatch.setattr(randlora_semi.SemiStructuredRandLoRAFunction, "apply", counted_semi)
    monkeypatch.setattr(randlora_semi, "randlora_linear", counted_dense)
    monkeypatch.setattr(randlora_semi.SemiStructuredBasis, "build",
                        staticmethod(lambda B: randlora_semi.SemiStructuredBasis(B, B.T.contiguous(), B)))
    return calls


@pytest.mark.parametrize("contraction", ["materialized", "tokens"])
@pytest.mark.parametrize("shape", [(19, 44), (44, 19)])
def test_the_2_4_path_matches_eager_in_float64_in_either_order(emulated_sparse_cores, contraction, shape):
    in_f, out_f = shape
    grads = {}
    for impl in ("eager", "semi_structured"):
        torch.manual_seed(0)
        model = randlora.adapt(torch.nn.Sequential(torch.nn.Linear(in_f, out_f)).double(), randlora.RandLoRAConfig(
            r=4, impl=impl, basis="sparse_2_4", target_modules=["0"], param_dtype="model", contraction=contraction))
        randomize_(model, seed=1)
        x = torch.randn(3, 7, in_f, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
        y = model(x)
        y.square().sum().backward()
        grads[impl] = (y, x.grad, model[0].randlora_lambda.grad, model[0].randlora_gamma.grad)
    for got, want in zip(grads["semi_structured"], grads["eager"]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    took = "semi" if contraction == "materialized" else "dense"
    assert emulated_sparse_cores[took] == 1 and sum(emulated_sparse_cores.values()) == 1


def test_the_2_4_layer_follows_the_flop_model_s_order(emulated_sparse_cores):
    """Few tokens on a tall layer: the FLOP model picks the token order, which runs dense; many tokens on a square
    layer: the materialised order, which runs on the 2:4 cores."""
    from randlora.layers.randlora_semi import SemiStructuredRandLoRALinear

    for features, tokens, took in (((64, 256), 2, "dense"), ((64, 64), 4096, "semi")):
        model = randlora.adapt(torch.nn.Sequential(torch.nn.Linear(*features)).double(), randlora.RandLoRAConfig(
            r=8, impl="semi_structured", basis="sparse_2_4", target_modules=["0"], param_dtype="model"))
        layer = model[0]
        assert isinstance(layer, SemiStructuredRandLoRALinear)
        before = dict(emulated_sparse_cores)
        model(torch.randn(tokens, features[0], dtype=torch.float64)).sum().backward()
        assert emulated_sparse_cores[took] == before[took] + 1
