"""Every two-rank check of the tests in one torchrun, started by parity.run_two_rank_checks:

    python -m torch.distributed.run --standalone --nproc-per-node 2 \
        tests/bench/two_rank_checks.py OUT FOLDER DEVICE IMPL...

One process group for all of them: torchrun's start and each rank's imports cost more than a check itself. In order,
rank 0 saving each result under OUT:

    fsdp-IMPL.pt    the FSDP2 parity check for each IMPL (fsdp_parity_worker.py, tests/bench/test_distributed.py)
    meta-build.pt   the meta-device build of the tiny-llama saved in FOLDER (meta_build_worker.py,
                    tests/bench/test_meta_build.py)

Each check builds its own models from fixed seeds, so none sees what an earlier one did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bench.worker import distributed
from tests.bench import fsdp_parity_worker, meta_build_worker


def main(out: str, folder: str, device_type: str, *impls: str) -> None:
    ranks = distributed.from_environment()
    device = torch.device("cuda", ranks.local_rank) if device_type == "cuda" else torch.device("cpu")
    distributed.init(device)
    for impl in impls:
        fsdp_parity_worker.run(str(Path(out) / f"fsdp-{impl}.pt"), device, ranks, impl)
    meta_build_worker.run(str(Path(out) / "meta-build.pt"), folder, device, ranks)
    distributed.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
