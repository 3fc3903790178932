"""One rank's part of the FSDP2 parity check (tests/bench/test_distributed.py), run under torchrun by
tests/bench/two_rank_checks.py.

Builds tiny-llama adapted with RandLoRA exactly as a cell does (bench.distributed), trains one step on its slice of
a global batch, and rank 0 saves what the test compares with one process on the whole batch: the loss, the full
gradients of λ and γ, the loss after one AdamW step, the digest of the replicated state, and the error that a
rank holding other bases must raise.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

import randlora
from bench.worker import distributed
from bench.spec.precision import PRECISIONS
from tests.bench.parity import GLOBAL_BATCH, adapted_model, global_batch, one_step


def run(out: str, device: torch.device, ranks: distributed.Ranks, impl: str) -> None:
    """This rank's part, in a process group already joined; rank 0 saves the result to `out`."""
    model = adapted_model(device, impl)
    digest = distributed.check_replicated(model)
    model = distributed.shard(model, PRECISIONS["fp32"], device, ranks.world_size)
    batch = distributed.rank_slice(lambda step: global_batch(device), ranks, GLOBAL_BATCH // ranks.world_size)(0)

    loss, grads, loss_after = one_step(model, batch)

    bank = next(layer.bank for _, layer in randlora.adapter_layers(model))
    if ranks.rank == 1:
        bank.A = bank.A + 1.0  # this rank now holds other bases than rank 0
    try:
        distributed.check_replicated(model)
        mismatch = None
    except RuntimeError as exc:
        mismatch = str(exc)

    result = {
        "backend": dist.get_backend(),
        "loss": distributed.mean(loss.item(), device),
        "loss_after_step": distributed.mean(loss_after.item(), device),
        "grads": grads,
        "digests": distributed.gather(digest),
        "mismatch": mismatch,
        "local_lambda_rows": distributed.gather(
            next(p.to_local().shape[0] for n, p in model.named_parameters() if n.endswith("randlora_lambda"))
        ),
    }
    if ranks.rank == 0:
        torch.save(result, out)
