"""One table of (method, impl) cases driving the behaviour every adapter shares."""
from __future__ import annotations

import copy

import pytest
import torch

import randlora
from randlora.bases import num_bases

from .helpers import TARGETS, TinyMLP, randomize_

CASES = {
    ("randlora", "eager"): randlora.RandLoRAConfig(r=5, alpha=9.0, target_modules=TARGETS, trainable_modules=["head"]),
    ("randlora", "compiled"): randlora.RandLoRAConfig(r=5, alpha=9.0, impl="compiled", target_modules=TARGETS),
    ("randlora", "sparse"): randlora.RandLoRAConfig(r=5, alpha=9.0, impl="sparse", basis="sparse", target_modules=TARGETS),
    ("lora", "eager"): randlora.LoRAConfig(r=3, alpha=6.0, target_modules=TARGETS, trainable_modules=["head"]),
    ("full", "eager"): randlora.FullFinetuneConfig(),
}
IDS = [f"{m}-{i}" for m, i in CASES]


def expected_trainable(config, base: TinyMLP) -> int:
    layers = [getattr(base, n) for n in TARGETS]
    head = sum(p.numel() for p in base.head.parameters()) if "head" in config.trainable_modules else 0
    if config.method == "randlora":
        return head + sum(num_bases(min(l.in_features, l.out_features), config.r) * (config.r + min(l.in_features, l.out_features)) for l in layers)
    if config.method == "lora":
        return head + sum(config.r * (l.in_features + l.out_features) for l in layers)
    return sum(p.numel() for p in base.parameters())


@pytest.fixture(params=list(CASES), ids=IDS)
def adapted(request):
    torch.manual_seed(0)
    base = TinyMLP()
    fresh = copy.deepcopy(base)
    model = randlora.adapt(copy.deepcopy(base), CASES[request.param])
    randomize_(model, seed=1)
    if CASES[request.param].method == "full":
        with torch.no_grad():
            model.up.weight.add_(0.1)  # a trained change, so that outputs differ from the base
    return CASES[request.param], base, fresh, model


def test_table_covers_every_registered_implementation():
    assert set(CASES) == set(randlora.implementations())


def test_only_declared_parameters_train(adapted):
    config, base, _, model = adapted
    assert randlora.count_trainable(model) == expected_trainable(config, base)
    if config.method != "full":
        assert all(not p.requires_grad for n, p in model.named_parameters() if n.endswith("base.weight") or n.endswith("base.bias"))


def test_merge_then_unmerge_keeps_the_function(adapted):
    config, base, _, model = adapted
    x = torch.randn(4, 19)
    with torch.no_grad():
        y = model(x)
        before = {n: p.clone() for n, p in model.named_parameters()}
        randlora.merge(model)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        randlora.unmerge(model)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p, before[n], rtol=1e-6, atol=1e-6)
    if config.method != "full":
        assert not torch.allclose(y, base(x), atol=1e-4)  # the adapter really changed the function


def test_save_then_load_into_a_fresh_model_reproduces_outputs(adapted, tmp_path):
    config, _, fresh, model = adapted
    path = randlora.save_adapter(model, tmp_path / "adapter.safetensors")
    loaded = randlora.load_adapter(fresh, path)
    x = torch.randn(4, 19)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert randlora.adapter_config(loaded) == config
    trainable_bytes = sum(p.numel() * p.element_size() for p in randlora.trainable_parameters(model).values())
    assert trainable_bytes <= path.stat().st_size <= trainable_bytes + 16_384  # tensors plus a small header


def test_disable_gives_the_base_function_and_enable_restores(adapted):
    config, base, _, model = adapted
    x = torch.randn(4, 19)
    if config.method == "full":
        with pytest.raises(randlora.ConfigError, match="no adapter to disable"):
            randlora.disable_adapters(model)
        return
    with torch.no_grad():
        y = model(x)
        randlora.merge(model)
        randlora.disable_adapters(model)  # unmerges first
        torch.testing.assert_close(model(x), base(x), rtol=1e-5, atol=1e-5)
        randlora.enable_adapters(model)
        torch.testing.assert_close(model(x), y, rtol=1e-6, atol=1e-6)


def test_training_step_updates_only_trainables(adapted):
    config, _, _, model = adapted
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(randlora.trainable_parameters(model).values(), lr=0.1)
    model(torch.randn(4, 19)).pow(2).mean().backward()
    assert all(p.grad is not None for p in randlora.trainable_parameters(model).values())
    opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])
