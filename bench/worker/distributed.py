"""A cell with `gpus: N > 1`, seen from one of its N ranks: the process group, FSDP2, and what the ranks agree on.

torchrun starts N copies of `python -m bench.worker <spec>` with RANK, WORLD_SIZE and LOCAL_RANK set (see
`bench.worker.agent`). Each rank builds the model on the meta device and adapts it, shards it:

    fully_shard(block) for every transformer block (the model's `_no_split_modules`), then fully_shard(model)

then materialises its shards only (bench/worker/meta_build.py) and checks that it holds the same replicated state
as every other rank. A rank keeps 1/N of every parameter, gradient and optimizer state and all-gathers one block at
a time. (An accuracy task's own model, `task.build_model`, is still built whole on every rank, then sharded.)
RandLoRA's λ and γ are parameters of the adapter layers inside a block: they are sharded with it and travel in the
block's all-gather, at no extra collective (replicating them would need an all-reduce of their gradients of its
own). The shared bases are plain attributes of the layers, neither parameters nor buffers, so FSDP never sees
them: each rank regenerates them from the seed on the CPU in float32, and `check_replicated` all-gathers a
SHA-256 of them (and of every buffer) and stops the cell if any rank differs.

Data: every rank draws the same global batch (batch_size × N samples from the cell's seed) and trains on its own
slice of it, so N ranks see exactly the samples one GPU sees at N times the batch size. FSDP averages the gradients
over the ranks, which for equal slices is the gradient of the mean loss over the global batch.

Time: a step takes as long as its slowest rank (`slowest`, an all-reduce MAX of the step times); throughput counts
the tokens of every rank.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from randlora import adapter_layers
from randlora.bases import BasisBank

from bench.spec.precision import Precision


@dataclass(frozen=True)
class Ranks:
    """Which of the cell's processes this is."""

    rank: int  # 0 .. world_size - 1; rank 0 writes the cell's record
    world_size: int
    local_rank: int  # the index of this rank's GPU among the cell's CUDA_VISIBLE_DEVICES

    @property
    def last(self) -> bool:
        return self.rank == self.world_size - 1


def from_environment() -> Ranks | None:
    """The rank torchrun started this process as; None for a cell of one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return None
    return Ranks(int(os.environ["RANK"]), world_size, int(os.environ["LOCAL_RANK"]))


def init(device: torch.device) -> None:
    """Join the cell's process group: NCCL between GPUs, gloo between CPU processes."""
    if dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")


def finish() -> None:
    """Leave the process group once every rank is done with it: without the barrier a rank that finished first can
    tear gloo down while another still talks to it, and that rank aborts ("terminate called without an active
    exception", seen once under load in the FSDP2 parity test)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mixed_precision(precision: Precision):
    """FSDP2's casts for a precision. Under autocast (fp16-amp, bf16-amp) parameters are all-gathered in the
    autocast dtype and gradients reduced in float32, the sharded counterpart of float32 master weights; the other
    precisions all-gather every parameter in its own dtype (bf16 weights next to float32 λ, γ)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision.autocast_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=precision.autocast_dtype, reduce_dtype=torch.float32)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks: modules whose class transformers lists in `_no_split_modules`."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def shard(model: nn.Module, precision: Precision, device: torch.device, world_size: int) -> nn.Module:
    """`model`, adapted, sharded in place with FSDP2 over the cell's ranks: each block, then the root (embeddings,
    final norm, output layer)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    policy = mixed_precision(precision)
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def replicated_digest(model: nn.Module) -> str:
    """SHA-256 of what every rank must hold identically and FSDP does not shard: this project's RandLoRA bases
    (the float32 CPU originals every device copy is made from) and every buffer (peft keeps its bases there)."""
    digest = hashlib.sha256()
    banks = {
        id(bank): bank
        for _, layer in adapter_layers(model)
        if isinstance(bank := getattr(layer, "bank", None), BasisBank)
    }
    for bank in banks.values():
        for basis in (bank.A, bank.B):
            digest.update(_bytes(basis))
    for name, buffer in model.named_buffers():
        digest.update(name.encode())
        digest.update(_bytes(buffer))
    return digest.hexdigest()


def _bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes()


def check_replicated(model: nn.Module) -> str:
    """The replicated state's digest, the same on every rank; RuntimeError naming the ranks that differ if not."""
    digests = gather(replicated_digest(model))
    if len(set(digests)) > 1:
        differ = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise RuntimeError(
            f"rank(s) {differ} hold other RandLoRA bases or buffers than rank 0 (SHA-256 {digests[0][:12]} ...)"
        )
    return digests[0]


def rank_slice(next_batch: Callable[[int], dict], ranks: Ranks, batch_size: int) -> Callable[[int], dict]:
    """`next_batch` draws the global batch (batch_size × world_size samples); this rank keeps its own rows
    [rank·batch_size, (rank+1)·batch_size) of every tensor whose first dimension is the global batch."""
    total, start = batch_size * ranks.world_size, batch_size * ranks.rank

    def batch(step: int) -> dict:
        return {
            key: value[start : start + batch_size] if _batched(value, total) else value
            for key, value in next_batch(step).items()
        }

    return batch


def _batched(value, total: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == total


def slowest(step_times_s: list[float], device: torch.device) -> list[float]:
    """Per step, the longest time any rank took (the step is not done before its slowest rank is)."""
    times = torch.tensor(step_times_s, dtype=torch.float64, device=device)
    dist.all_reduce(times, op=dist.ReduceOp.MAX)
    return times.tolist()


def mean(value: float, device: torch.device) -> float:
    """The mean of `value` over the ranks (the loss of the global batch, from each rank's slice)."""
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.item() / dist.get_world_size()


def gather(obj) -> list:
    """`obj` of every rank, in rank order, on every rank."""
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def merge_memory(per_rank: list[dict]) -> dict:
    """Every memory figure as its maximum over the ranks (None where no rank measured it), and the ranks' own
    figures under `per_rank`, in rank order."""
    merged: dict = {}
    for key in per_rank[0]:
        values = [m.get(key) for m in per_rank if m.get(key) is not None]
        merged[key] = max(values) if values else None
    merged["per_rank"] = per_rank
    return merged
