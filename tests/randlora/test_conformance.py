"""One table of (method, impl) cases driving the behaviour every adapter shares."""
from __future__ import annotations

import copy

import pytest
import torch

import randlora
from randlora.bases import num_bases
from randlora.model import planned_adapter

from .helpers import TARGETS, TinyMLP, randomize_

CASES = {
    ("randlora", "eager"): randlora.RandLoRAConfig(r=5, alpha=9.0, target_modules=TARGETS, trainable_modules=["head"]),
    ("randlora", "compiled"): randlora.RandLoRAConfig(r=5, alpha=9.0, impl="compiled", target_modules=TARGETS),
    ("randlora", "sparse"): randlora.RandLoRAConfig(r=5, alpha=9.0, impl="sparse", basis="sparse", target_modules=TARGETS),
    ("randlora", "semi_structured"): randlora.RandLoRAConfig(
        r=5, alpha=9.0, impl="semi_structured", basis="sparse_2_4", target_modules=TARGETS
    ),
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


def _load_base(adapted_model, base: TinyMLP) -> None:
    """Copy the base model's weights into an adapted model (wrapped linears hold theirs under `.base`)."""
    with torch.no_grad():
        for name, p in base.named_parameters():
            module, leaf = name.rsplit(".", 1)
            target = adapted_model.get_submodule(module)
            getattr(getattr(target, "base", target), leaf).copy_(p)


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
    if config.method == "full":
        for action in (randlora.merge, randlora.unmerge):
            with pytest.raises(randlora.ConfigError, match="has no adapter to (merge|unmerge)"):
                action(model)
        return
    with torch.no_grad():
        y = model(x)
        before = {n: p.clone() for n, p in model.named_parameters()}
        randlora.merge(model)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        randlora.unmerge(model)
        torch.testing.assert_close(model(x), y, rtol=1e-5, atol=1e-5)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p, before[n], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(y, base(x), atol=1e-4)  # the adapter really changed the function


def test_declared_trainable_shapes_are_the_adapted_ones(adapted):
    """load_adapter checks files against this plan before adapting: it must name exactly what adapt makes."""
    config, _, fresh, model = adapted
    layers, trainables = planned_adapter(fresh, config)
    assert trainables == {n: tuple(p.shape) for n, p in randlora.trainable_parameters(model).items()}
    assert layers == {n: (m.out_features, m.in_features) for n, m in randlora.adapter_layers(model)}
    assert randlora.count_trainable(fresh) == sum(p.numel() for p in fresh.parameters())  # fresh was not touched


def test_load_into_a_merged_model_unmerges_loads_and_merges_again(adapted, tmp_path):
    config, base, fresh, model = adapted
    if config.method == "full":
        return
    path = randlora.save_adapter(model, tmp_path / "adapter.safetensors")
    x = torch.randn(4, 19)
    target = randlora.adapt(copy.deepcopy(base), config)
    randomize_(target, seed=7)  # another adapter, merged into the weights
    randlora.merge(target)
    randlora.load_adapter(target, path)
    with torch.no_grad():
        torch.testing.assert_close(target(x), model(x), rtol=1e-5, atol=1e-5)
        assert all(layer.merged for _, layer in randlora.adapter_layers(target))
        randlora.unmerge(target)
        torch.testing.assert_close(target(x), model(x), rtol=1e-5, atol=1e-5)
        randlora.disable_adapters(target)
        torch.testing.assert_close(target(x), base(x), rtol=1e-5, atol=1e-5)  # base weights intact


def test_merge_while_disabled_is_refused_and_the_model_stays_the_base_function(adapted):
    config, base, _, model = adapted
    if config.method == "full":
        return
    x = torch.randn(4, 19)
    randlora.disable_adapters(model)
    with pytest.raises(randlora.ConfigError, match=r"adapters are disabled; call randlora.enable_adapters\(model\)"):
        randlora.merge(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x), rtol=1e-6, atol=1e-6)
    assert not any(layer.merged for _, layer in randlora.adapter_layers(model))


def test_init_adapters_after_to_empty_gives_a_fresh_adapter_from_a_meta_model(adapted):
    config, base, _, _ = adapted
    if config.method == "full":
        return
    with torch.device("meta"):
        meta = TinyMLP()
    randlora.adapt(meta, config)
    y = meta(torch.randn(4, 19, device="meta"))  # shape inference on meta works
    assert y.is_meta and y.shape == (4, 3)
    meta.to_empty(device="cpu")
    _load_base(meta, base)
    randlora.init_adapters(meta)
    reference = randlora.adapt(copy.deepcopy(base), config)
    for name, p in randlora.trainable_parameters(meta).items():
        if "randlora_" in name or "lora_B" in name:
            assert torch.equal(p, randlora.trainable_parameters(reference)[name]), name
        elif "lora_A" in name:  # Kaiming-uniform: random, within its bound
            assert p.abs().max() <= 1 / p.shape[1] ** 0.5 and p.std() > 0
    x = torch.randn(4, 19)
    with torch.no_grad():
        torch.testing.assert_close(meta(x), base(x), rtol=1e-6, atol=1e-6)  # ΔW = 0


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
