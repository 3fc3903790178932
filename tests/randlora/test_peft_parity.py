"""Parity with peft's RandLora: the same ΔW from the same bases and trainables, and an export peft loads.

Pairing: peft flattens its scaled basis (r, n, d) k-major and its B (D, n, r) base-major, so column c of the
flattened B meets row c of the scaled A, i.e. (k = c // n, j = c % n). This library uses the same pairing
(functional.py), so no permutation is needed: λ is stored (r, n) and γ (n, d) exactly as in peft.
"""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open

import randlora

from .helpers import TARGETS, TinyMLP, randomize_

peft = pytest.importorskip("peft")


def _adapted_pair(basis="uniform"):
    torch.manual_seed(0)
    base = TinyMLP()
    ours = randlora.adapt(copy.deepcopy(base), randlora.RandLoRAConfig(r=5, alpha=11.0, basis=basis, target_modules=TARGETS))
    randomize_(ours, seed=3, scale=0.1)
    return base, ours


@pytest.mark.parametrize("basis", ["uniform", "sparse"])
def test_delta_weight_equals_peft_get_delta_weight_with_the_same_bases(basis):
    base, ours = _adapted_pair(basis)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.RandLoraConfig(r=5, randlora_alpha=11.0, target_modules=list(TARGETS))
    )
    A, B = randlora.peft_export._peft_bases(list(randlora.adapter_layers(ours)), randlora.adapter_config(ours))
    with torch.no_grad():
        theirs.base_model.randlora_A["default"] = A
        theirs.base_model.randlora_B["default"] = B
        for name, layer in randlora.adapter_layers(ours):
            p = theirs.base_model.model.get_submodule(name)
            p.randlora_A["default"], p.randlora_B["default"] = A, B
            p.randlora_lambda["default"].copy_(layer.randlora_lambda)
            p.randlora_gamma["default"].copy_(layer.randlora_gamma)
            torch.testing.assert_close(layer.delta_weight(), p.get_delta_weight("default"), rtol=1e-5, atol=1e-6)


def test_exported_adapter_loads_into_peft_and_gives_the_same_outputs(tmp_path):
    base, ours = _adapted_pair()
    randlora.export_to_peft(ours, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    x = torch.randn(6, 19)
    with torch.no_grad():
        y_ours, y_theirs = ours(x), theirs(x)
    assert not torch.allclose(y_ours, base(x), atol=1e-3)
    torch.testing.assert_close(y_theirs, y_ours, rtol=1e-5, atol=1e-5)


def test_export_of_a_lora_adapter_is_refused(tmp_path):
    model = randlora.adapt(TinyMLP(), randlora.LoRAConfig(target_modules=TARGETS))
    with pytest.raises(randlora.ConfigError, match="only RandLoRA adapters export"):
        randlora.export_to_peft(model, tmp_path)


def test_export_with_n_bases_capping_a_layer_is_refused(tmp_path):
    model = randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(r=5, n_bases=6, target_modules=TARGETS))
    with pytest.raises(randlora.ConfigError, match=r"n_bases=6 gives layer 'mid' fewer bases than peft's ceil\(d / r\)"):
        randlora.export_to_peft(model, tmp_path)


def test_export_with_n_bases_capping_no_layer_loads_into_peft(tmp_path):
    torch.manual_seed(0)
    base = TinyMLP()
    ours = randlora.adapt(copy.deepcopy(base), randlora.RandLoRAConfig(r=5, alpha=11.0, n_bases=9, target_modules=TARGETS))
    randomize_(ours, seed=3, scale=0.1)
    randlora.export_to_peft(ours, tmp_path / "peft")
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft"))
    x = torch.randn(6, 19)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-5, atol=1e-5)


def test_export_holds_one_copy_of_the_bases_per_layer(tmp_path):
    """What export_to_peft's docstring warns about: the file grows with layers × bases, not with the trainables."""
    _, ours = _adapted_pair()
    out = randlora.export_to_peft(ours, tmp_path / "peft")
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        basis_copies = sum(k.endswith("randlora_B") for k in f.keys())
    assert basis_copies == len(TARGETS) + 1
    trainable_bytes = 4 * randlora.count_trainable(ours)
    assert (out / "adapter_model.safetensors").stat().st_size > 10 * trainable_bytes
