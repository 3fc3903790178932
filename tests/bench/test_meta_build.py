"""A cell of several GPUs built on the meta device (bench/worker/meta_build.py): each of two ranks materialises only
its shard, and the model it trains is the one the eager build trains.

    loaded   the same weights (a saved tiny-llama read shard by shard) give the loss, the λ and γ gradients and
             the loss after an AdamW step of one eager process on the whole batch
    random   random weights have the preset's statistics (norms at one, N(0, 0.02) elsewhere), each rank drew
             other rows, and the adapters start fresh (λ = 0, γ = 1/d)

The ranks run on the CPU over gloo, and on two GPUs over NCCL where there are two (tests/bench/parity.py).
"""

from __future__ import annotations

import pytest
import torch

from bench.core.errors import BenchError
from bench.spec import methods, presets
from bench.worker import meta_build

from .parity import BACKENDS, GPU_PAIR, adapted_model, eager_tiny_llama, global_batch, one_step

TOLERANCES = {"cpu": {"rtol": 1e-5, "atol": 1e-7}, "cuda": {"rtol": 1e-4, "atol": 1e-6}}  # as test_distributed.py


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=GPU_PAIR)])
def two_ranks(request, two_rank_checks) -> tuple[dict, str]:
    """(what rank 0 of the 2-rank meta build saved, the device type)."""
    device = request.param
    return two_rank_checks(device)["meta-build"], device


@pytest.mark.slow
def test_loaded_shards_give_the_loss_gradients_and_step_of_the_eager_build(two_ranks):
    ranks, device = two_ranks
    assert ranks["backend"] == BACKENDS[device]
    loss, grads, loss_after = one_step(adapted_model(torch.device(device)), global_batch(torch.device(device)))
    tolerance = TOLERANCES[device]
    assert ranks["loss"] == pytest.approx(loss.item(), rel=tolerance["rtol"])
    assert set(ranks["grads"]) == set(grads) and len(grads) == 2 * 7 * 2  # λ, γ of 14 layers
    for name, grad in grads.items():
        assert grad.abs().max() > 100 * tolerance["atol"], name  # a gradient worth comparing
        torch.testing.assert_close(ranks["grads"][name], grad, **tolerance, msg=lambda m: f"{name}: {m}")
    assert ranks["loss_after_step"] == pytest.approx(loss_after.item(), rel=tolerance["rtol"])


@pytest.mark.slow
def test_random_shards_have_the_statistics_of_the_eager_build(two_ranks):
    ranks, _ = two_ranks
    eager = dict(eager_tiny_llama().named_parameters())
    assert set(ranks["random_weights"]) == set(eager)
    for key, weight in ranks["random_weights"].items():
        reference = eager[key].detach()
        if reference.std() == 0:  # a norm's weight: ones
            assert torch.equal(weight, reference), key
            continue
        assert weight.std().item() == pytest.approx(reference.std().item(), rel=0.1), key
        assert abs(weight.mean().item()) < 5 * reference.std().item() / weight.numel() ** 0.5, key
    rank0, rank1 = ranks["q_proj_rows"]
    assert rank0.shape == rank1.shape == (32, 64)  # q_proj (64, 64): 32 rows a rank
    assert (rank0 - rank1).abs().min() > 0  # each rank drew its own rows, not the same ones
    assert ranks["random_loss"] == pytest.approx(torch.log(torch.tensor(1024.0)).item(), rel=0.05)  # ~uniform


@pytest.mark.slow
def test_random_shards_start_as_a_fresh_adapter_with_one_set_of_bases(two_ranks):
    ranks, _ = two_ranks
    lambdas = {n: t for n, t in ranks["random_adapters"].items() if n.endswith("randlora_lambda")}
    gammas = {n: t for n, t in ranks["random_adapters"].items() if n.endswith("randlora_gamma")}
    assert len(lambdas) == len(gammas) == 14
    assert all(torch.equal(t, torch.zeros_like(t)) for t in lambdas.values())
    for name, gamma in gammas.items():
        assert torch.equal(gamma, torch.full_like(gamma, 1.0 / gamma.shape[1])), name  # γ = 1/d
    (loaded0, random0), (loaded1, random1) = ranks["digests"]
    assert loaded0 == loaded1 and random0 == random1 and loaded0 == random0  # the same bases from the same seed
    total = sum(t.numel() for t in ranks["random_weights"].values()) + sum(
        t.numel() for t in ranks["random_adapters"].values()
    )
    assert sum(ranks["local_numel"]) == total and max(ranks["local_numel"]) <= total // 2 + 64  # a shard each



METHODS_ON_META = [n for n, m in methods.METHODS.items() if m.init_adapters is not None and not m.unavailable_reason()]


@pytest.mark.parametrize("name", METHODS_ON_META)
def test_a_method_built_on_the_meta_device_starts_as_its_base_model(name):
    """After to_empty every adapter holds garbage until `Method.init_adapters` makes ΔW = 0 again: the adapted model
    must then compute what its base weights compute (one process, not sharded: the rows are all of them)."""
    method = methods.METHODS[name]
    meta = meta_build.build("tiny-llama", torch.float32)
    patterns, _ = presets.default_modules("tiny-llama")
    targets = methods.resolve_modules(meta.model, patterns, "targets", linear_only=True)
    model = method.adapt(meta.model, method.resolve({}), targets, ())
    keys = meta.checkpoint_keys(model)
    meta_build.materialise(meta, model, keys, torch.device("cpu"), method.init_adapters, seed=0)

    base = eager_tiny_llama()
    base.load_state_dict({keys[n]: p.detach() for n, p in model.named_parameters() if n in keys})
    ids = global_batch(torch.device("cpu"))["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert base.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)


def test_loading_reads_each_parameter_under_its_checkpoint_key_and_names_a_missing_one(tmp_path):
    from safetensors.torch import save_file

    save_file({"proj.weight": torch.arange(6.0).reshape(3, 2), "proj.bias": torch.ones(3)}, tmp_path / "m.safetensors")
    layer = torch.nn.Linear(2, 3)
    meta_build.load_shards(layer, tmp_path, {"weight": "proj.weight", "bias": "proj.bias"})
    assert layer.weight.tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]] and layer.bias.tolist() == [1.0] * 3
    with pytest.raises(BenchError, match=r"no safetensors file in .* holds 'proj.scale' \(the model's 'weight'\)"):
        meta_build.load_shards(layer, tmp_path, {"weight": "proj.scale"})


def test_an_hf_model_not_on_this_machine_is_refused_with_how_to_get_it():
    with pytest.raises(BenchError, match="huggingface-cli download no-such-org/no-such-model"):
        meta_build.build("hf:no-such-org/no-such-model", torch.float32)


@pytest.mark.parametrize("name", [n for n, m in methods.METHODS.items() if m.init_adapters is None])
def test_a_method_whose_bases_are_drawn_while_adapting_is_refused_on_several_gpus(name, monkeypatch):
    from bench.spec.precision import PRECISIONS
    from bench.spec.tasks import TASKS
    from bench.worker import measure

    from .conftest import one_cell

    monkeypatch.setenv("WORLD_SIZE", "2"), monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("LOCAL_RANK", "0")
    cell = one_cell(method={"name": name}, gpus=2)
    with pytest.raises(BenchError, match=f"method '{name}' cannot be built on the meta device; run it with gpus: 1"):
        measure._set_up(cell, torch.device("cpu"), PRECISIONS["fp32"], TASKS[cell.task], {})
