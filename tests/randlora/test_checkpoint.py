"""load_adapter is all or nothing: every refused file leaves the model exactly as it was (fresh or adapted, merged
or not), and a file loads only into the architecture it was saved from."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import randlora
from randlora.layers import randlora_eager

from .helpers import TARGETS, TinyMLP, randomize_

CONFIG = randlora.RandLoRAConfig(r=5, alpha=9.0, target_modules=TARGETS, trainable_modules=["head"])


def _saved(tmp_path, config=CONFIG):
    """(adapted model, its saved file, an unadapted copy of its base)."""
    torch.manual_seed(0)
    model = TinyMLP()
    base = copy.deepcopy(model)
    randlora.adapt(model, config)
    randomize_(model, seed=1)
    return model, randlora.save_adapter(model, tmp_path / "good.safetensors"), base


def _contents(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def _rewrite(path, out, tensors=None, metadata=None):
    """A copy of the adapter file at `path` with some tensors / metadata fields replaced (None deletes a field)."""
    old_tensors, old_metadata = _contents(path)
    old_tensors.update(tensors or {})
    for key, value in (metadata or {}).items():
        if value is None:
            old_metadata.pop(key, None)
        else:
            old_metadata[key] = value if isinstance(value, str) else json.dumps(value)
    save_file(old_tensors, str(out), metadata=old_metadata)
    return out


def _config_with(**fields):
    return {**CONFIG.to_dict(), **fields}


BAD_FILES = {  # name: (make the bad file from the good one, the refusal's message)
    "not-safetensors": (lambda p, o: o.write_text("hello world") and o, r"is not a safetensors file"),
    "no-file": (lambda p, o: o.parent / "missing.safetensors", r"is not a file"),
    "config-missing": (
        lambda p, o: _rewrite(p, o, metadata={"config": None}), r"metadata field 'config' is missing or not JSON"
    ),
    "config-not-json": (
        lambda p, o: _rewrite(p, o, metadata={"config": "{r: 5"}), r"metadata field 'config' is missing or not JSON"
    ),
    "config-a-list": (
        lambda p, o: _rewrite(p, o, metadata={"config": [1, 2]}), r"'config' is a JSON list, expected a dict"
    ),
    "dropout-x": (lambda p, o: _rewrite(p, o, metadata={"config": _config_with(dropout="x")}), r"dropout is 'x'"),
    "targets-5": (
        lambda p, o: _rewrite(p, o, metadata={"config": _config_with(target_modules=5)}), r"target_modules is 5"
    ),
    "r-2M": (
        lambda p, o: _rewrite(p, o, metadata={"config": _config_with(r=2_000_000)}), r"the model needs \(1, 23\)"
    ),
    "last-tensor-shape": (
        lambda p, o: _rewrite(p, o, tensors={"head.bias": torch.zeros(2, 2)}),  # the model's last parameter
        r"tensor 'head.bias' has shape \(2, 2\), the model needs \(3,\)",
    ),
    "nan": (
        lambda p, o: _rewrite(p, o, tensors={"up.randlora_lambda": torch.full((5, 4), float("nan"))}),
        r"'up.randlora_lambda' holds NaN or Inf",
    ),
    "inf": (
        lambda p, o: _rewrite(p, o, tensors={"mid.randlora_gamma": torch.full((9, 41), float("inf"))}),
        r"'mid.randlora_gamma' holds NaN or Inf",
    ),
    "int32": (
        lambda p, o: _rewrite(p, o, tensors={"up.randlora_lambda": torch.zeros(5, 4, dtype=torch.int32)}),
        r"'up.randlora_lambda' is I32; adapter tensors must be floating point",
    ),
    "extra-tensor": (
        lambda p, o: _rewrite(p, o, tensors={"up.extra": torch.zeros(1)}), r"unexpected \['up.extra'\]"
    ),
    "layer-shape": (
        lambda p, o: _rewrite(p, o, metadata={"layers": {"up": [45, 19], "mid": [41, 41], "down": [23, 41]}}),
        r"layer 'up' of shape \(out, in\) \(45, 19\) but this model's is \(41, 19\)",
    ),
    "layers-malformed": (
        lambda p, o: _rewrite(p, o, metadata={"layers": {"up": "big"}}), r"metadata layers\['up'\] is 'big'"
    ),
    "bank": (
        lambda p, o: _rewrite(p, o, metadata={"bank": [19, 99]}),
        r"bases of \(d_max, D_max\) \(19, 99\) but this model needs \(41, 41\)",
    ),
}


def _snapshot(model):
    layers = list(randlora.adapter_layers(model))
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, type(m).__name__) for n, m in model.named_modules()],
        getattr(model, "adapter_config", None),
        [(layer.merged, layer.enabled) for _, layer in layers],
        {n for n, p in model.named_parameters() if p.requires_grad},
    )


def _assert_untouched(model, before):
    after = _snapshot(model)
    assert after[0].keys() == before[0].keys()
    assert all(torch.equal(after[0][k], before[0][k]) for k in before[0])
    assert after[1:] == before[1:]


@pytest.mark.parametrize("state", ["fresh", "adapted", "merged"])
@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_a_refused_file_leaves_the_model_untouched(bad, state, tmp_path, monkeypatch):
    _, good, _ = _saved(tmp_path)
    make, match = BAD_FILES[bad]
    path = make(good, tmp_path / "bad.safetensors")
    torch.manual_seed(5)
    model = TinyMLP()
    if state != "fresh":
        randlora.adapt(model, CONFIG)
        randomize_(model, seed=4)
    if state == "merged":
        randlora.merge(model)
    before = _snapshot(model)
    # nothing is allocated before the checks: building the shared bases would be the first big allocation
    monkeypatch.setattr(randlora_eager, "BasisBank", lambda **kwargs: pytest.fail("bases built before checks"))
    # an adapted model may refuse a file's other config first
    with pytest.raises(randlora.ConfigError, match=match if state == "fresh" else f"{match}|holds an adapter for"):
        randlora.load_adapter(model, path)
    _assert_untouched(model, before)


def test_a_file_from_a_layer_with_another_long_side_is_refused(tmp_path):
    """λ (r, n) and γ (n, d) depend on d only: up (19 -> 41) and up (19 -> 45) have the same tensors but other bases."""
    _, path, _ = _saved(tmp_path)
    other = TinyMLP()
    other.up = torch.nn.Linear(19, 45)
    other.mid = torch.nn.Linear(45, 41, bias=False)
    match = r"layer 'mid' of shape \(out, in\) \(41, 41\) but this model's is \(41, 45\)"
    with pytest.raises(randlora.ConfigError, match=match):
        randlora.load_adapter(other, path)
    assert getattr(other, "adapter_config", None) is None


def test_a_float64_file_loads_into_float32_parameters_with_a_warning(tmp_path):
    model, good, base = _saved(tmp_path)
    tensors, _ = _contents(good)
    path = _rewrite(good, tmp_path / "f64.safetensors", tensors={k: v.double() for k, v in tensors.items()})
    with pytest.warns(UserWarning, match=r"tensors converted float64 -> float32"):
        loaded = randlora.load_adapter(base, path)
    x = torch.randn(3, 19)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_a_file_without_recorded_layer_shapes_loads_with_a_warning_to_re_save(tmp_path):
    model, good, base = _saved(tmp_path)
    path = _rewrite(good, tmp_path / "old.safetensors", metadata={"layers": None, "bank": None})
    with pytest.warns(UserWarning, match=r"cannot be verified; re-save it with randlora.save_adapter"):
        loaded = randlora.load_adapter(base, path)
    assert randlora.adapter_config(loaded) == CONFIG


def test_the_file_records_layer_shapes_and_the_bank(tmp_path):
    _, path, _ = _saved(tmp_path)
    _, metadata = _contents(path)
    assert json.loads(metadata["layers"]) == {"up": [41, 19], "mid": [41, 41], "down": [23, 41]}
    assert json.loads(metadata["bank"]) == [41, 41]


def test_n_bases_round_trips_through_save_and_load(tmp_path):
    config = randlora.RandLoRAConfig(r=5, n_bases=2, target_modules=TARGETS)
    model, path, base = _saved(tmp_path, config)
    loaded = randlora.load_adapter(base, path)
    assert randlora.adapter_config(loaded).n_bases == 2
    assert loaded.mid.randlora_lambda.shape == (5, 2)
    x = torch.randn(3, 19)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
