"""Bad input gets one sentence naming the field and what would be right."""
from __future__ import annotations

import pytest
import torch

import randlora

from .helpers import TinyMLP


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: randlora.RandLoRAConfig(r=0), r"RandLoRAConfig\.r is 0; it must be a positive integer"),
        (lambda: randlora.RandLoRAConfig(r=-3), r"RandLoRAConfig\.r is -3"),
        (lambda: randlora.LoRAConfig(r=0), r"LoRAConfig\.r is 0"),
        (lambda: randlora.RandLoRAConfig(impl="fast"), r"impl is 'fast'; allowed values are 'eager', 'compiled', 'sparse'"),
        (lambda: randlora.RandLoRAConfig(basis="gauss"), r"basis is 'gauss'; allowed values are 'uniform', 'normal', 'sparse', 'very_sparse'"),
        (lambda: randlora.RandLoRAConfig(alpha=float("nan")), r"alpha is nan"),
        (lambda: randlora.RandLoRAConfig(dropout=1.0), r"dropout is 1.0; it must be in \[0, 1\)"),
        (lambda: randlora.RandLoRAConfig(seed=2**64), r"seed is 18446744073709551616; it must be an integer in \[0, 2\*\*64\)"),
        (lambda: randlora.RandLoRAConfig(seed=-1), r"seed is -1; it must be an integer in \[0, 2\*\*64\)"),
        (lambda: randlora.RandLoRAConfig(seed=1.5), r"seed is 1.5"),
        (lambda: randlora.RandLoRAConfig(dropout="0.1"), r"dropout is '0.1'; it must be in \[0, 1\)"),
        (lambda: randlora.LoRAConfig(dropout=None), r"LoRAConfig\.dropout is None"),
        (lambda: randlora.RandLoRAConfig(alpha="640"), r"alpha is '640'; it must be a positive finite number"),
        (lambda: randlora.RandLoRAConfig(alpha=True), r"alpha is True"),
        (lambda: randlora.RandLoRAConfig(r=4.0), r"r is 4.0; it must be a positive integer"),
        (lambda: randlora.RandLoRAConfig(n_bases=0), r"n_bases is 0; it must be a positive integer or None"),
        (lambda: randlora.RandLoRAConfig(n_bases=2.5), r"n_bases is 2.5"),
        (lambda: randlora.RandLoRAConfig(target_modules=5), r"target_modules is 5; it must be a module name"),
        (lambda: randlora.AdapterConfig.from_dict(["randlora"]), r"must be a JSON object of fields, got a list"),
        (lambda: randlora.AdapterConfig.from_dict({"method": "dora"}), r"method is 'dora'; allowed values are"),
        (lambda: randlora.AdapterConfig.from_dict({"method": "lora", "rank": 4}), r"LoRAConfig has no field 'rank'"),
    ],
)
def test_bad_config_names_the_field_and_allowed_values(make, match):
    with pytest.raises(randlora.ConfigError, match=match):
        make()


def test_pattern_matching_nothing_is_an_error_listing_the_linear_names():
    with pytest.raises(randlora.ConfigError, match=r"target_modules pattern 'q_proj' matches no module.*down, head, mid, up"):
        randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(target_modules=["q_proj"]))


def test_non_linear_target_is_an_error():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    with pytest.raises(randlora.ConfigError, match=r"selects '1', a LayerNorm; only linear layers \(nn.Linear or transformers. Conv1D\) can be adapted"):
        randlora.adapt(model, randlora.LoRAConfig(target_modules=["1"]))


def test_invalid_regex_is_an_error():
    with pytest.raises(randlora.ConfigError, match=r"not a valid regular expression"):
        randlora.adapt(TinyMLP(), randlora.LoRAConfig(target_modules=["up("]))


def test_adapting_twice_is_an_error():
    model = randlora.adapt(TinyMLP(), randlora.LoRAConfig(target_modules=["up"]))
    with pytest.raises(randlora.ConfigError, match="already adapted"):
        randlora.adapt(model, randlora.LoRAConfig(target_modules=["up"]))


def test_regex_selects_by_full_name():
    model = randlora.adapt(TinyMLP(), randlora.LoRAConfig(target_modules=[r"(up|down)"]))
    assert sorted(name for name, _ in randlora.adapter_layers(model)) == ["down", "up"]


def test_loading_an_adapter_into_another_architecture_is_an_error(tmp_path):
    model = randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(r=4, target_modules=["up"]))
    path = randlora.save_adapter(model, tmp_path / "a.safetensors")
    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(randlora.ConfigError):
        randlora.load_adapter(other, path)


@pytest.mark.parametrize("action", [randlora.merge, randlora.unmerge, randlora.disable_adapters, randlora.init_adapters])
def test_adapter_actions_on_a_model_without_adapters_are_errors(action):
    with pytest.raises(randlora.ConfigError, match=r"model is not adapted; call randlora.adapt"):
        action(TinyMLP())


def test_huge_seed_passes_validation_and_makes_bases():
    model = randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(r=4, seed=2**64 - 1, target_modules=["up"]))
    assert torch.isfinite(model.up.delta_weight()).all()
