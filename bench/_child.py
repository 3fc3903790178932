"""The entry point of a cell's process: `python -m bench._child <spec.json>`.

Protocol with the runner: the spec holds the cell, the options and the record skeleton; this process fills in
the record and writes it atomically to spec["result_path"], then exits 0. No result file means the process died
(killed on timeout, crashed, killed by the kernel's OOM killer), and the runner records that instead.
A cell of N GPUs runs this module once per rank, under torchrun (`bench.launchers.torchrun`): when every rank
succeeds, rank 0 writes the record with the memory of every rank; a rank that fails writes its own outcome next
to the spec and exits 1, which makes torchrun stop the others, and the launcher writes the record from it.
If the runner itself dies, this process notices it has been orphaned and exits without a result, so that
`--resume` runs the cell again instead of finding a half-finished one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ORPHAN_CHECK_S = 1.0


def _exit_when_orphaned(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(ORPHAN_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    _exit_when_orphaned(os.getppid())
    spec_path = Path(argv[1])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    from . import cell, distributed  # torch and friends load here, after the watchdog is up
    from .cells import Cell

    outcome = cell.run(Cell.from_dict(spec["cell"]), cell.Options(**spec["options"]))
    ranks = distributed.from_environment()
    if ranks is not None:
        return _finish_rank(spec_path, spec, outcome, ranks)
    spec["record"].update(outcome)
    spec["record"]["env"].update(gpu_env([outcome["device"]]))
    finish_record(spec)
    return 0


def _finish_rank(spec_path: Path, spec: dict, outcome: dict, ranks) -> int:
    from . import distributed, results
    from .launchers import torchrun

    if outcome["status"] != "ok":
        results.write_json(torchrun.rank_outcome_path(spec_path, ranks.rank), outcome)
        # torchrun then stops the other ranks, which may be waiting for this one in a collective. Exit at once: an
        # orderly exit may wait on NCCL's teardown of a collective the other ranks never join.
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(1)
    parts = distributed.gather({"memory": outcome["memory"], "device": outcome["device"]})
    if ranks.rank == 0:
        record = spec["record"]
        record.update(outcome)
        record["memory"] = distributed.merge_memory([part["memory"] for part in parts])
        record["device"]["world_size"] = ranks.world_size
        record["env"].update(gpu_env([part["device"] for part in parts]))
        finish_record(spec)
    distributed.finish()
    return 0


def gpu_env(devices: list[dict]) -> dict:
    """The record's GPU fields from the devices the cell's processes ran on (rank order): every GPU under `gpus`
    (NVML's description), the first under `gpu`, and how many under `gpu_count` (0 on a CPU)."""
    from . import nvml

    uuids = [d["gpu_uuid"] for d in devices if d.get("gpu_uuid")]
    gpus = [nvml.describe(uuid) or {"gpu_uuid": uuid} for uuid in uuids]
    return {"gpus": gpus, "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus)}


def finish_record(spec: dict) -> None:
    """Stamp the record's end and write it, atomically, where the runner looks for it."""
    from . import results

    record = spec["record"]
    record["run"]["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["run"]["wall_s"] = time.time() - spec["spawned_at"]
    results.write_json(Path(spec["result_path"]), record)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
