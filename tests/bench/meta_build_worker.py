"""One rank's part of the meta-device build check (tests/bench/test_meta_build.py), run under torchrun by
tests/bench/two_rank_checks.py.

Two models, each built as a cell of several GPUs builds it (bench.worker.meta_build): on the meta device, adapted
with parity.py's RandLoRA, sharded with FSDP2, then materialised on this rank's device.

    loaded   hf:FOLDER (the tiny-llama the test saved), each rank reading its rows of the safetensors; λ set to
             parity.py's random values; one training step on this rank's slice of the global batch
    random   the tiny-llama preset with random weights, drawn into the shards

Rank 0 saves what the test compares: the loaded model's loss, λ and γ gradients and loss after an AdamW step; the
random model's full weights by checkpoint key, its λ and γ, its loss, and what each rank holds; the digests.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import randlora
from bench.spec.precision import PRECISIONS
from bench.worker import distributed, meta_build
from tests.bench.parity import CONFIG, GLOBAL_BATCH, global_batch, one_step, random_lambdas

Q_PROJ = "model.layers.0.self_attn.q_proj.base.weight"  # a weight whose rows the test compares across ranks


def sharded(model_name: str, device: torch.device, world_size: int, impl: str):
    """(the model materialised on `device`, {parameter name: checkpoint key}, the replicated state's digest)."""
    meta = meta_build.build(model_name, torch.float32)
    model = randlora.adapt(meta.model, randlora.RandLoRAConfig(**CONFIG, impl=impl)).train()
    keys = meta.checkpoint_keys(model)
    model = distributed.shard(model, PRECISIONS["fp32"], device, world_size)
    meta_build.materialise(meta, model, keys, device, randlora.init_adapters, seed=0)
    return model, keys, distributed.check_replicated(model)


def run(out: str, folder: str, device: torch.device, ranks: distributed.Ranks, impl: str = "eager") -> None:
    """This rank's part, in a process group already joined; rank 0 saves the result to `out`."""
    batch = distributed.rank_slice(lambda step: global_batch(device), ranks, GLOBAL_BATCH // ranks.world_size)(0)

    loaded, _, loaded_digest = sharded(f"hf:{folder}", device, ranks.world_size, impl)
    with torch.no_grad():
        for p, value in random_lambdas(loaded):
            meta_build.copy_rows(p, lambda start, stop: value[start:stop])
    loss, grads, loss_after = one_step(loaded, batch)

    model, keys, random_digest = sharded("tiny-llama", device, ranks.world_size, impl)
    with torch.no_grad():
        random_loss = model(**batch).loss
    model.reshard()  # the root keeps its parameters gathered after a forward: back to the shards
    params = dict(model.named_parameters())
    full = {name: p.full_tensor().cpu() for name, p in params.items()}
    result = {
        "backend": dist.get_backend(),
        "loss": distributed.mean(loss.item(), device),
        "loss_after_step": distributed.mean(loss_after.item(), device),
        "grads": grads,
        "digests": distributed.gather([loaded_digest, random_digest]),
        "random_loss": distributed.mean(random_loss.item(), device),
        "random_weights": {keys[name]: tensor for name, tensor in full.items() if name in keys},
        "random_adapters": {name: tensor for name, tensor in full.items() if name not in keys},
        "local_numel": distributed.gather(sum(p.to_local().numel() for p in model.parameters())),
        "q_proj_rows": distributed.gather(meta_build.local_rows(params[Q_PROJ])[0].cpu()),
    }
    if ranks.rank == 0:
        torch.save(result, out)
