"""Adapters on transformers' Conv1D (GPT-2: weight stored (in, out)), for every (method, impl), in float64.

The spec is the eager formula: each adapted layer must compute x W0ᵀ + b + x ΔWᵀ with W0 the (out, in) view of the
stored weight and ΔW from `helpers.reference_delta` (RandLoRA) or s·B A (LoRA); merging must fold ΔWᵀ into the
stored (in, out) weight; saving and loading and the peft export must work on such a model.
"""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import transformers
from transformers.pytorch_utils import Conv1D

import randlora
from randlora.layouts import is_linear, weight_out_in

from .helpers import randomize_, reference_delta

GPT2_TARGETS = ("c_attn", "c_proj", "c_fc")
CASES = {
    "randlora-eager": randlora.RandLoRAConfig(r=4, alpha=7.0, param_dtype="model", target_modules=GPT2_TARGETS),
    "randlora-compiled": randlora.RandLoRAConfig(
        r=4, alpha=7.0, impl="compiled", param_dtype="model", target_modules=GPT2_TARGETS
    ),
    "randlora-sparse": randlora.RandLoRAConfig(
        r=4, alpha=7.0, impl="sparse", basis="sparse", param_dtype="model", target_modules=GPT2_TARGETS
    ),
    "lora-eager": randlora.LoRAConfig(r=3, alpha=5.0, param_dtype="model", target_modules=GPT2_TARGETS),
}


def tiny_gpt2(dtype=torch.float64) -> transformers.GPT2LMHeadModel:
    """Odd shapes: c_attn 18 → 54, attn.c_proj 18 → 18, c_fc 18 → 43, mlp.c_proj 43 → 18."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=53, n_positions=16, n_embd=18, n_layer=2, n_head=3, n_inner=43, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(config).to(dtype).eval()


def _reference_delta(layer) -> torch.Tensor:
    """ΔW (out, in) in float64 from the formula, whatever the layer's impl."""
    if hasattr(layer, "lora_A"):
        return layer.scaling * layer.lora_B.double() @ layer.lora_A.double()
    A, B = layer.bank.get("cpu", torch.float64)
    A, B = layer.bank.layer_slices(A, B, layer.d, layer.D)
    return reference_delta(A, B, layer.randlora_lambda, layer.randlora_gamma, layer.scaling, layer.in_features,
                           layer.out_features)


def _adapted(case: str):
    base = tiny_gpt2()
    model = randlora.adapt(copy.deepcopy(base), CASES[case])
    randomize_(model, seed=2)
    return base, model


def test_all_linear_selects_every_conv1d_but_not_the_tied_output_layer():
    selected = randlora.select_modules(tiny_gpt2(), ("all-linear",), "target_modules", linear_only=True)
    kinds = sorted({name.split(".", 3)[-1] for name in selected})
    assert kinds == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert len(selected) == 8 and "lm_head" not in selected


def test_a_conv1d_is_seen_as_out_by_in():
    conv = Conv1D(43, 18)  # nf = out 43, nx = in 18: weight stored (18, 43)
    assert is_linear(conv) and weight_out_in(conv).shape == (43, 18)
    assert weight_out_in(conv).data_ptr() == conv.weight.data_ptr()  # a view: merging writes the stored weight


@pytest.mark.parametrize("case", list(CASES))
def test_each_adapted_conv1d_computes_the_eager_formula_in_float64(case):
    base, model = _adapted(case)
    layers = dict(randlora.adapter_layers(model))
    assert len(layers) == 8 and all(isinstance(layer.base, Conv1D) for layer in layers.values())
    for name, layer in layers.items():
        conv = base.get_submodule(name)
        xi = torch.randn(2, 5, layer.in_features, dtype=torch.float64)
        expected = xi @ (conv.weight + _reference_delta(layer).T) + conv.bias  # the stored (in, out) weight
        torch.testing.assert_close(layer(xi), expected, rtol=1e-10, atol=1e-10)
    reference = copy.deepcopy(base)
    with torch.no_grad():
        for name, layer in layers.items():
            reference.get_submodule(name).weight += _reference_delta(layer).T
    tokens = torch.randint(0, 53, (2, 5))
    torch.testing.assert_close(model(tokens).logits, reference(tokens).logits, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["randlora-compiled", "randlora-sparse"])
def test_gradients_on_conv1d_match_the_eager_impl_in_float64(case):
    base = tiny_gpt2()
    eager = randlora.adapt(copy.deepcopy(base), dataclasses.replace(CASES[case], impl="eager"))  # the same bases
    other = randlora.adapt(copy.deepcopy(base), CASES[case])
    randomize_(eager, seed=4)
    randomize_(other, seed=4)
    eager.train(), other.train()
    tokens = torch.randint(0, 53, (2, 6))
    for model in (eager, other):
        model(tokens, labels=tokens).loss.backward()
    expected, got = randlora.trainable_parameters(eager), randlora.trainable_parameters(other)
    assert expected.keys() == got.keys() and len(got) == 16
    for name in expected:
        torch.testing.assert_close(got[name].grad, expected[name].grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("case", ["randlora-eager", "lora-eager"])
def test_merge_folds_the_update_into_the_stored_weight_and_unmerge_restores_it(case):
    """Merging works in float32 (delta_weight's contract), hence float32 tolerances on this float64 model."""
    base, model = _adapted(case)
    tokens = torch.randint(0, 53, (2, 5))
    before = model(tokens).logits
    randlora.merge(model)
    for name, layer in randlora.adapter_layers(model):
        expected = base.get_submodule(name).weight + _reference_delta(layer).T
        torch.testing.assert_close(layer.base.weight, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(tokens).logits, before, rtol=1e-5, atol=1e-5)
    randlora.unmerge(model)
    for name, layer in randlora.adapter_layers(model):
        torch.testing.assert_close(layer.base.weight, base.get_submodule(name).weight, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["randlora-eager", "lora-eager"])
def test_an_adapter_saved_from_gpt2_loads_into_a_fresh_gpt2(case, tmp_path):
    base, model = _adapted(case)
    randlora.save_adapter(model, tmp_path / "adapter.safetensors")
    loaded = randlora.load_adapter(copy.deepcopy(base), tmp_path / "adapter.safetensors")
    tokens = torch.randint(0, 53, (2, 5))
    assert not torch.allclose(model(tokens).logits, base(tokens).logits)
    torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits, rtol=0, atol=0)


def test_full_finetuning_trains_every_conv1d_and_counts_its_update_rank():
    model = randlora.adapt(tiny_gpt2(), randlora.FullFinetuneConfig())
    conv = model.transformer.h[0].mlp.c_fc
    assert conv.weight.requires_grad
    assert randlora.update_ranks(model)["transformer.h.0.mlp.c_fc"] == 18


def test_an_exported_gpt2_adapter_loads_into_peft_with_fan_in_fan_out_and_the_same_outputs(tmp_path):
    peft = pytest.importorskip("peft")
    base = tiny_gpt2(torch.float32)
    ours = randlora.adapt(copy.deepcopy(base), randlora.RandLoRAConfig(r=4, alpha=7.0, target_modules=GPT2_TARGETS))
    randomize_(ours, seed=3, scale=0.1)
    randlora.export_to_peft(ours, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    assert theirs.peft_config["default"].fan_in_fan_out
    tokens = torch.randint(0, 53, (2, 5))
    with torch.no_grad():
        y_ours, y_theirs = ours(tokens).logits, theirs(tokens).logits
    assert not torch.allclose(y_ours, base(tokens).logits, atol=1e-3)
    torch.testing.assert_close(y_theirs, y_ours, rtol=1e-5, atol=1e-5)


def test_export_of_an_adapter_on_both_conv1d_and_linear_layers_is_refused(tmp_path):
    net = torch.nn.Sequential(Conv1D(7, 5), torch.nn.Linear(7, 6))
    model = randlora.adapt(net, randlora.RandLoRAConfig(r=2, target_modules=["0", "1"]))
    with pytest.raises(randlora.ConfigError, match=r"wraps both nn.Linear and transformers' Conv1D layers"):
        randlora.export_to_peft(model, tmp_path)
