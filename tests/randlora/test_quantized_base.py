"""Adapters over a quantised frozen base (bitsandbytes 4-bit nf4 and int8 layers, on the CPU).

The base's own kernel computes base(x) (int8 also quantises the activations), so parity is checked on the adapter's
part, y − base(x), against the float64 formula x ΔWᵀ, and for nf4 the whole output against the dequantised W0.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import randlora
from randlora import ConfigError, LoRAConfig, RandLoRAConfig

from .helpers import TARGETS, TinyMLP, randomize_, reference_delta

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'randlora-bench[quant]')")

KINDS = ("nf4", "int8")
# float32 compute over values of order 1: the adapter's part and its gradients agree with float64 to ~1e-6
RTOL = {"adapter": 2e-5, "nf4_output": 2e-5}


def quantize_(model: nn.Module, kind: str, names=TARGETS) -> nn.Module:
    """Replace the named float32 nn.Linear layers by bitsandbytes layers holding the same weight, quantised."""
    for name in names:
        linear = model.get_submodule(name)
        bias = linear.bias is not None
        if kind == "nf4":
            q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias, compute_dtype=torch.float32,
                                  quant_type="nf4")  # fmt: skip
            q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4")
        else:
            q = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False)
            q.weight = bnb.nn.Int8Params(linear.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
        if bias:
            q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        setattr(model, name, q.to("cpu"))  # bitsandbytes quantises on the move to a device
    return model


def _model(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return quantize_(TinyMLP(), kind)


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


CASES = [(kind, impl) for kind in KINDS for impl in ("eager", "sparse")] + [("nf4", "compiled")]


@pytest.mark.parametrize("kind,impl", CASES)
def test_the_adapter_part_over_a_quantized_base_matches_the_float64_formula(kind, impl):
    model = _model(kind)
    basis = "sparse" if impl == "sparse" else "uniform"
    randlora.adapt(model, RandLoRAConfig(r=4, impl=impl, basis=basis, target_modules=TARGETS))
    randomize_(model)
    for name in TARGETS:
        layer = model.get_submodule(name)
        assert layer.quant is not None, f"{name}: the quantised base was not recognised"
        x = torch.randn(3, 7, layer.in_features, requires_grad=True)
        w = torch.randn(3, 7, layer.out_features)  # dL/dy
        (layer(x) * w).sum().backward()
        x_base = x.detach().clone().requires_grad_(True)
        base_out = layer.base(x_base)
        (base_out * w).sum().backward()
        adapter_out = layer(x).detach() - base_out.detach()

        A, B = layer.bases(torch.device("cpu"), torch.float64)
        lam = layer.randlora_lambda.detach().double().requires_grad_(True)
        gam = layer.randlora_gamma.detach().double().requires_grad_(True)
        x64 = x.detach().double().requires_grad_(True)
        dw = reference_delta(A, B, lam, gam, layer.scaling, layer.in_features, layer.out_features)
        ref = x64 @ dw.T
        (ref * w.double()).sum().backward()

        assert _relative_error(adapter_out, ref) < RTOL["adapter"], name
        assert _relative_error(layer.randlora_lambda.grad, lam.grad) < RTOL["adapter"], name
        assert _relative_error(layer.randlora_gamma.grad, gam.grad) < RTOL["adapter"], name
        assert _relative_error(x.grad - x_base.grad, x64.grad) < RTOL["adapter"], name  # dL/dx minus the base's
        if kind == "nf4":  # nf4's kernel is x W0ᵀ with W0 dequantised: the whole output follows the formula
            W0 = layer.quant.dequantize(layer.base).double()
            bias = 0 if layer.base.bias is None else layer.base.bias.double()
            full = x.detach().double() @ (W0 + dw.detach()).T + bias
            assert _relative_error(layer(x).detach(), full) < RTOL["nf4_output"], name


@pytest.mark.parametrize("kind", KINDS)
def test_lora_over_a_quantized_base_adds_its_update_to_the_base_output(kind):
    model = _model(kind)
    randlora.adapt(model, LoRAConfig(r=3, target_modules=TARGETS, param_dtype="model"))
    randomize_(model)
    layer = model.up
    assert layer.lora_A.dtype == torch.float32  # the base's float dtype, never its uint8 / int8 storage
    x = torch.randn(5, layer.in_features)
    ref = x.double() @ layer.delta_weight().double().T
    assert _relative_error(layer(x) - layer.base(x), ref) < RTOL["adapter"]


@pytest.mark.parametrize("kind", KINDS)
def test_merge_refuses_a_quantized_base_and_leaves_every_layer_as_it_was(kind):
    model = _model(kind)
    randlora.adapt(model, RandLoRAConfig(r=4, target_modules=TARGETS))
    randomize_(model)
    before = {name: model.get_submodule(name).base.weight.data.clone() for name in TARGETS}
    with pytest.raises(ConfigError, match=r"quantised base .* dequantize=True"):
        randlora.merge(model)
    for name in TARGETS:
        layer = model.get_submodule(name)
        assert not layer.merged and torch.equal(layer.base.weight.data, before[name])


def test_merge_with_dequantize_folds_the_update_into_the_dequantized_weight():
    model = _model("nf4")
    randlora.adapt(model, RandLoRAConfig(r=4, target_modules=TARGETS))
    randomize_(model)
    x = torch.randn(4, 19)
    adapted = model(x)
    randlora.merge(model, dequantize=True)
    assert all(layer.merged and layer.quant is None for _, layer in randlora.adapter_layers(model))
    assert isinstance(model.up.base, nn.Linear) and model.up.base.weight.dtype == torch.float32
    assert _relative_error(model(x), adapted) < 1e-4
    randlora.unmerge(model)
    assert _relative_error(model(x), adapted) < 1e-4


def test_materialized_contraction_is_refused_over_a_quantized_base():
    model = _model("nf4")
    with pytest.raises(ConfigError, match="contraction is 'materialized' but target 'up' has a quantised base"):
        randlora.adapt(model, RandLoRAConfig(r=4, target_modules=TARGETS, contraction="materialized"))
    assert isinstance(model.up, bnb.nn.Linear4bit)  # refused before any layer was wrapped


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_over_a_quantized_base_give_the_same_outputs(kind, tmp_path):
    model = _model(kind)
    randlora.adapt(model, RandLoRAConfig(r=4, target_modules=TARGETS))
    randomize_(model)
    path = randlora.save_adapter(model, tmp_path / "adapter.safetensors")
    fresh = randlora.load_adapter(_model(kind), path)
    x = torch.randn(4, 19)
    assert torch.equal(fresh(x), model(x))


def test_export_to_peft_over_a_quantized_base_writes_the_same_trainables(tmp_path):
    pytest.importorskip("peft", reason="peft is not installed (pip install 'randlora-bench[peft]')")
    from safetensors.torch import load_file

    model = _model("nf4")
    randlora.adapt(model, RandLoRAConfig(r=4, target_modules=TARGETS))
    randomize_(model)
    out = randlora.export_to_peft(model, tmp_path / "peft")
    tensors = load_file(str(out / "adapter_model.safetensors"))
    assert torch.equal(tensors["base_model.model.up.randlora_lambda"], model.up.randlora_lambda.detach())
