"""The accumulation window against the eager reference: after k micro-batches λ and γ hold the eager sum of their
gradients (float64, odd shapes), the forward is unchanged, and a failed window leaves .grad alone."""
from __future__ import annotations

import pytest
import torch

import randlora

from .helpers import TARGETS, TinyMLP, randomize_

IMPLS = [("eager", "uniform"), ("compiled", "uniform"), ("sparse", "sparse"), ("eager", "very_sparse")]


def _model(impl, basis, accumulate, n_bases=None, trainable=()):
    torch.manual_seed(1)
    model = TinyMLP().double()
    config = randlora.RandLoRAConfig(
        r=5, alpha=7.0, impl=impl, basis=basis, seed=3, target_modules=TARGETS, trainable_modules=trainable,
        param_dtype="model", n_bases=n_bases, accumulate=accumulate,
    )
    randlora.adapt(model, config)
    randomize_(model, seed=2)
    return model


def _micro_batches(k):
    gen = torch.Generator().manual_seed(5)
    return [(torch.randn(2, 3 + i, 19, generator=gen, dtype=torch.float64), torch.randn(2, 3 + i, 3, generator=gen,
             dtype=torch.float64)) for i in range(k)]


def _loss(model, batch):
    x, target = batch
    return ((model(x) - target) ** 2).mean()


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("impl,basis", IMPLS)
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("n_bases", [None, 2], ids=["n-full", "n2-capped"])
def test_window_gradients_equal_the_eager_sum_over_micro_batches(impl, basis, k, n_bases):
    batches = _micro_batches(k)
    reference = _model("eager", basis, "micro_batch", n_bases, trainable=("head",))
    for batch in batches:
        _loss(reference, batch).backward()
    model = _model(impl, basis, "window", n_bases, trainable=("head",))
    losses = []
    with randlora.accumulation_window(model):
        for batch in batches:
            loss = _loss(model, batch)
            loss.backward()
            losses.append(loss.detach())
    want, got = _grads(reference), _grads(model)
    assert set(got) == set(want) and any("randlora_gamma" in n for n in got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-11, msg=name)
    torch.testing.assert_close(torch.stack(losses), torch.stack([_loss(reference, b).detach() for b in batches]))


def test_window_weight_is_dropped_and_the_next_window_sees_new_scalings():
    model = _model("eager", "uniform", "window")
    batch = _micro_batches(1)[0]
    with randlora.accumulation_window(model):
        _loss(model, batch).backward()
    assert all(layer._window_weight is None for _, layer in randlora.adapter_layers(model))
    with torch.no_grad():
        model.mid.randlora_lambda.mul_(3.0)
    model.zero_grad()
    with randlora.accumulation_window(model):
        inside = model(batch[0])
    torch.testing.assert_close(inside, model(batch[0]))  # built from the new λ, as the eager forward is


@pytest.mark.parametrize("param_dtype", ["float32", "model"])
def test_window_gradients_have_their_parameters_layout_for_a_fused_optimizer(param_dtype):
    """CUDA's fused AdamW refuses a gradient whose strides are not its parameter's (the batched reductions returned
    permuted views once); λ and γ of layers grouped in one batch also get gradients of their own, second window too."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(12, 12), torch.nn.Tanh(), torch.nn.Linear(12, 12)).to(torch.bfloat16)
    config = randlora.RandLoRAConfig(r=5, target_modules=["0", "2"], accumulate="window", param_dtype=param_dtype)
    randlora.adapt(model, config)
    randomize_(model, seed=2)
    x = torch.randn(3, 12, dtype=torch.bfloat16)
    for _ in range(2):
        with randlora.accumulation_window(model):
            model(x).square().mean().backward()
    trained = {n: p for n, p in model.named_parameters() if "randlora_" in n}
    assert trained and all(p.grad is not None for p in trained.values())
    for name, p in trained.items():
        assert p.grad.dtype == p.dtype and p.grad.shape == p.shape and p.grad.stride() == p.stride(), name
    storages = {p.grad.untyped_storage().data_ptr() for p in trained.values()}
    assert len(storages) == len(trained)  # no two gradients share memory


def test_a_window_that_raises_leaves_grad_untouched():
    model = _model("eager", "uniform", "window")
    with pytest.raises(RuntimeError, match="boom"):
        with randlora.accumulation_window(model):
            _loss(model, _micro_batches(1)[0]).backward()
            raise RuntimeError("boom")
    assert all(p.grad is None for n, p in model.named_parameters() if "randlora_" in n)
    assert all(layer._window_weight is None for _, layer in randlora.adapter_layers(model))


@pytest.mark.parametrize("accumulate", ["micro_batch", "window"])
def test_a_window_leaves_the_layers_attributes_as_it_found_them(accumulate):
    """A compiled block guards on the layer's attributes: a window must not add one (it recompiled every block)."""
    model = _model("eager", "uniform", accumulate)
    before = {name: sorted(vars(layer)) for name, layer in randlora.adapter_layers(model)}
    with randlora.accumulation_window(model):
        _loss(model, _micro_batches(1)[0]).backward()
        opened = [layer._window_weight is not None for _, layer in randlora.adapter_layers(model)]
    assert all(opened) == (accumulate == "window") and any(opened) == all(opened)
    assert {name: sorted(vars(layer)) for name, layer in randlora.adapter_layers(model)} == before


def test_windows_do_not_nest():
    model = _model("eager", "uniform", "window")
    with randlora.accumulation_window(model):
        with pytest.raises(randlora.ConfigError, match="do not nest"):
            with randlora.accumulation_window(model):
                pass


def test_window_with_dropout_is_refused_naming_the_field():
    with pytest.raises(randlora.ConfigError, match="accumulate"):
        randlora.RandLoRAConfig(accumulate="window", dropout=0.1)
    with pytest.raises(randlora.ConfigError, match="accumulate.*'micro_batch', 'window'"):
        randlora.RandLoRAConfig(accumulate="step")


@pytest.mark.slow
def test_compiled_blocks_trace_the_window_without_breaks_or_a_recompile_per_window():
    """The compiled impl's blocks (and a model under torch.compile) see a new window weight every optimizer step:
    after the first two windows (one graph without, one with a window) nothing compiles again."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from .test_compiled import _Stack

    def stack(impl):
        torch.manual_seed(0)
        config = randlora.RandLoRAConfig(r=3, impl=impl, target_modules=["up", "head"], accumulate="window")
        return randlora.adapt(_Stack().double(), config)

    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, 5, 12, generator=gen, dtype=torch.float64) for _ in range(6)]
    grads = {}
    for impl in ("eager", "compiled"):
        torch._dynamo.reset()
        counters.clear()
        model = stack(impl)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        graphs = []
        for step in range(3):
            with randlora.accumulation_window(model):
                for x in xs[2 * step: 2 * step + 2]:
                    model(x).square().mean().backward()
            grads[impl, step] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
            optimizer.step()
            optimizer.zero_grad()
            graphs.append(counters["stats"]["unique_graphs"])
        assert not counters["graph_break"]
        if impl == "compiled":
            assert graphs[0] > 0 and graphs[2] == graphs[1]
    for step in range(3):
        for name, want in grads["eager", step].items():
            torch.testing.assert_close(grads["compiled", step][name], want, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_a_window_over_fsdp2_sharded_parameters_is_refused_naming_the_field(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = _model("eager", "uniform", "window").float()
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(randlora.ConfigError, match="accumulate is 'window' but this model's parameters are sharded"):
            with randlora.accumulation_window(model):
                pass
        assert all(layer._window_weight is None for _, layer in randlora.adapter_layers(model))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("batch_bytes", [1, None], ids=["a-batch-per-layer", "one-batch"])
def test_layers_of_one_shape_batched_or_not_get_the_eager_sum(monkeypatch, batch_bytes):
    """Three layers of one shape open and close as one batch, or (a tiny WINDOW_BATCH_BYTES) one batch each: either
    way λ, γ get the eager impl's summed gradients over two micro-batches, in float64."""
    from randlora.layers import randlora_eager

    if batch_bytes is not None:
        monkeypatch.setattr(randlora_eager, "WINDOW_BATCH_BYTES", batch_bytes)

    def stack(accumulate):
        torch.manual_seed(3)
        layers = [torch.nn.Linear(10, 10) for _ in range(3)]
        model = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.Tanh())]).double()
        config = randlora.RandLoRAConfig(r=3, target_modules=["0", "2", "4"], accumulate=accumulate,
                                         param_dtype="model")
        randlora.adapt(model, config)
        randomize_(model, seed=4)
        return model

    xs = [torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    grads = {}
    for accumulate in ("micro_batch", "window"):
        model = stack(accumulate)
        with randlora.accumulation_window(model):
            for x in xs:
                model(x).square().mean().backward()
        grads[accumulate] = _grads(model)
    assert len(grads["window"]) == 6
    for name, want in grads["micro_batch"].items():
        torch.testing.assert_close(grads["window"][name], want, rtol=1e-10, atol=1e-12, msg=name)
