"""A cell of several GPUs: FSDP2 over two ranks gives the loss and the λ, γ gradients of one process on the whole
batch, every rank holds the same RandLoRA bases, and the pieces a multi-rank record is made of.

The ranks run on the CPU over gloo (FSDP2's fully_shard works on a CPU device mesh), and on two GPUs over NCCL
where there are two.
"""

from __future__ import annotations

import pytest
import torch

import randlora
from bench.worker import distributed
from bench.worker import agent as torchrun
from bench.worker import protocol

from .parity import BACKENDS, GPU_PAIR, PARITY_IMPLS, adapted_model, global_batch, one_step

# float32 throughout; two ranks sum their half-batch gradients in another order than one process does
TOLERANCES = {"cpu": {"rtol": 1e-5, "atol": 1e-7}, "cuda": {"rtol": 1e-4, "atol": 1e-6}}
# (device, the ranks' impl); the one-process reference is always the eager impl
RUNS = [
    pytest.param((device, impl), marks=[GPU_PAIR] if device == "cuda" else [], id=f"{device}-{impl}")
    for device, impls in PARITY_IMPLS.items()
    for impl in impls
]


def one_process_reference(device: torch.device) -> dict:
    loss, grads, loss_after = one_step(adapted_model(device), global_batch(device))
    return {"loss": loss.item(), "loss_after_step": loss_after.item(), "grads": grads}


@pytest.fixture(scope="module", params=RUNS)
def two_ranks(request, two_rank_checks) -> tuple[dict, dict, str]:
    """(what rank 0 of a 2-rank FSDP2 run saved, the one-process eager reference, the device type)."""
    device, impl = request.param
    return two_rank_checks(device)[f"fsdp-{impl}"], one_process_reference(torch.device(device)), device


@pytest.mark.slow
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(two_ranks):
    ranks, single, device = two_ranks
    tolerance = TOLERANCES[device]
    assert ranks["backend"] == BACKENDS[device]
    assert ranks["loss"] == pytest.approx(single["loss"], rel=tolerance["rtol"])
    assert set(ranks["grads"]) == set(single["grads"]) and len(single["grads"]) == 2 * 7 * 2  # λ, γ of 14 layers
    for name, grad in single["grads"].items():
        assert grad.abs().max() > 100 * tolerance["atol"], name  # a gradient worth comparing
        torch.testing.assert_close(ranks["grads"][name], grad, **tolerance, msg=lambda m: f"{name}: {m}")
    assert ranks["loss_after_step"] == pytest.approx(single["loss_after_step"], rel=tolerance["rtol"])


@pytest.mark.slow
def test_lambda_is_sharded_and_the_bases_are_the_same_on_every_rank(two_ranks):
    ranks, _, _ = two_ranks
    assert ranks["local_lambda_rows"] == [4, 4]  # λ (r=8, n) split over the two ranks
    assert len(set(ranks["digests"])) == 1
    assert ranks["mismatch"].startswith("rank(s) [1] hold other RandLoRA bases or buffers than rank 0")


def test_the_digest_covers_the_bases_and_the_buffers():
    model = adapted_model(torch.device("cpu"))
    before = distributed.replicated_digest(model)
    assert distributed.replicated_digest(adapted_model(torch.device("cpu"))) == before  # regenerated from the seed
    bank = next(layer.bank for _, layer in randlora.adapter_layers(model))
    bank.B[0, 0] += 1e-6
    assert distributed.replicated_digest(model) != before
    bank.B[0, 0] -= 1e-6
    next(model.buffers()).mul_(1.5)
    assert distributed.replicated_digest(model) != before


def test_each_rank_trains_on_its_own_slice_of_the_global_batch():
    batch = {"input_ids": torch.arange(12).reshape(6, 2), "labels": torch.arange(12).reshape(6, 2), "n": 3}
    slices = [distributed.rank_slice(lambda step: batch, distributed.Ranks(r, 3, r), 2)(0) for r in range(3)]
    assert [s["input_ids"][:, 0].tolist() for s in slices] == [[0, 2], [4, 6], [8, 10]]
    assert all(s["n"] == 3 for s in slices)  # not a batch tensor: every rank gets it whole


def test_memory_of_a_cell_is_the_maximum_over_ranks_with_each_rank_kept():
    per_rank = [
        {"peak_allocated_bytes": 10, "param_bytes": 5, "nvml_peak_bytes": None},
        {"peak_allocated_bytes": 12, "param_bytes": 5, "nvml_peak_bytes": None},
    ]
    merged = distributed.merge_memory(per_rank)
    assert (merged["peak_allocated_bytes"], merged["param_bytes"], merged["nvml_peak_bytes"]) == (12, 5, None)
    assert merged["per_rank"] == per_rank


def test_a_failed_cell_names_the_most_telling_failure_and_its_rank():
    outcomes = {
        0: {"status": "error", "reason": "RuntimeError: Connection closed by peer", "traceback": "t0"},
        1: {"status": "oom", "reason": "OutOfMemoryError: CUDA out of memory", "traceback": "t1"},
    }
    merged = torchrun.merge_failures(outcomes, world_size=2)
    assert (merged["status"], merged["reason"], merged["traceback"]) == (
        "oom",
        "rank 1 of 2: OutOfMemoryError: CUDA out of memory",
        "t1",
    )
    assert merged["rank_outcomes"]["0"]["status"] == "error"


def test_torchrun_is_started_as_a_user_would_start_it(tmp_path):
    spec = tmp_path / "specs" / "abc.json"
    assert protocol.cell_command(2, spec)[1:] == ["-m", "bench.worker.agent", str(spec)]
    assert protocol.cell_command(1, spec)[1:] == ["-m", "bench.worker", str(spec)]
    assert torchrun.torchrun_args(spec, 2) == ["--standalone", "--nproc-per-node=2", "-m", "bench.worker", str(spec)]
    assert protocol.rank_outcome_path(spec, 1) == tmp_path / "specs" / "abc.rank1.json"
