"""The entry point of a cell's process: `python -m bench.worker <spec.json>` (see bench/worker/protocol.py).

This process measures the cell (bench/worker/measure.py), fills in the record and writes it atomically to
spec["result_path"], then exits 0. A cell of N GPUs runs this module once per rank, under torchrun
(bench/worker/agent.py): when every rank succeeds, rank 0 writes the record with the memory of every rank; a rank
that fails writes its own outcome next to the spec and exits 1, which makes torchrun stop the others.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.worker import protocol


def main(argv: list[str]) -> int:
    protocol.exit_when_orphaned(os.getppid())
    spec_path = Path(argv[1])
    spec = protocol.read_spec(spec_path)
    from bench.spec.cells import Cell  # torch and friends load here, after the watchdog is up
    from bench.worker import distributed, measure

    outcome = measure.run(Cell.from_dict(spec["cell"]), measure.Options(**spec["options"]))
    record = protocol.record_of(spec)
    ranks = distributed.from_environment()
    if ranks is not None:
        return _finish_rank(spec_path, spec, record, outcome, ranks)
    record.complete(outcome)
    record.env.update(gpu_env([outcome["device"]]))
    protocol.finish_record(spec, record)
    return 0


def _finish_rank(spec_path: Path, spec: dict, record, outcome: dict, ranks) -> int:
    from bench.core.fileio import write_json
    from bench.worker import distributed

    if outcome["status"] != "ok":
        write_json(protocol.rank_outcome_path(spec_path, ranks.rank), outcome)
        # torchrun then stops the other ranks, which may be waiting for this one in a collective. Exit at once: an
        # orderly exit may wait on NCCL's teardown of a collective the other ranks never join.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(1)
    parts = distributed.gather({"memory": outcome["memory"], "device": outcome["device"]})
    if ranks.rank == 0:
        record.complete(outcome)
        record.memory = distributed.merge_memory([part["memory"] for part in parts])
        record.device["world_size"] = ranks.world_size
        record.env.update(gpu_env([part["device"] for part in parts]))
        protocol.finish_record(spec, record)
    distributed.finish()
    return 0


def gpu_env(devices: list[dict]) -> dict:
    """The record's GPU fields from the devices the cell's processes ran on (rank order): every GPU under `gpus`
    (NVML's description), the first under `gpu`, and how many under `gpu_count` (0 on a CPU)."""
    from bench.core import nvml

    uuids = [d["gpu_uuid"] for d in devices if d.get("gpu_uuid")]
    gpus = [nvml.describe(uuid) or {"gpu_uuid": uuid} for uuid in uuids]
    return {"gpus": gpus, "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus)}


if __name__ == "__main__":
    sys.exit(main(sys.argv))
