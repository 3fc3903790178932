"""A cell of N GPUs: torchrun's elastic agent, run in this process, starting N ranks of `bench.worker`.

    python -m bench.worker.agent <spec>
      = python -m torch.distributed.run --standalone --nproc-per-node N -m bench.worker <spec>
        plus the watchdog of every cell process (the agent exits when the runner is gone, and the ranks, whose
        parent it is, follow) and the record of a cell whose ranks failed

torchrun, not a process pool of our own: it sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT,
picks a free port (`--standalone`, so several cells can run side by side), and stops every rank as soon as one
exits with an error, which is how a rank that fails reaches the others, blocked in a collective with it.

A rank that fails leaves its outcome in `<spec>.rank<k>.json` and exits 1 (see bench/worker/protocol.py). When the ranks
are done and no record exists, this process writes one from those outcomes: the most telling status over the
ranks (`SEVERITY`: an out-of-memory on any rank makes the cell `oom`), its reason prefixed with the rank, and
every rank's status and reason under run.rank_outcomes. If no rank left a word, it exits 1 and the runner
records an error with the log's last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bench.core.fileio import read_json
from bench.worker import protocol

SEVERITY = ("oom", "diverged", "error", "skipped")  # which failure a cell's record names, first to last


def torchrun_args(spec_path: Path, nproc: int) -> list[str]:
    """The arguments of `python -m torch.distributed.run` for the cell (what a user would type)."""
    return ["--standalone", f"--nproc-per-node={nproc}", "-m", protocol.ENTRY, str(spec_path)]


def merge_failures(outcomes: dict[int, dict], world_size: int) -> dict:
    """The cell's status, reason and measurements from the outcomes of the ranks that failed."""
    rank, worst = min(outcomes.items(), key=lambda item: (SEVERITY.index(item[1]["status"]), item[0]))
    merged = {**worst, "reason": f"rank {rank} of {world_size}: {worst['reason']}"}
    merged["rank_outcomes"] = {str(r): {"status": o["status"], "reason": o["reason"]} for r, o in outcomes.items()}
    return merged


def main(argv: list[str]) -> int:
    import os

    protocol.exit_when_orphaned(os.getppid())
    spec_path = Path(argv[1])
    spec = protocol.read_spec(spec_path)
    world_size = spec["cell"]["gpus"]
    for stale in spec_path.parent.glob(f"{spec_path.stem}.rank*.json"):  # from an earlier run of the same cell
        stale.unlink()

    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        run.main(torchrun_args(spec_path, world_size))
    except ChildFailedError:
        pass  # the ranks' outcomes say what went wrong
    if Path(spec["result_path"]).exists():
        return 0
    paths = {rank: protocol.rank_outcome_path(spec_path, rank) for rank in range(world_size)}
    outcomes = {rank: read_json(path) for rank, path in paths.items() if path.exists()}
    if not outcomes:
        return 1
    merged = merge_failures(outcomes, world_size)
    record = protocol.record_of(spec)
    record.run["rank_outcomes"] = merged.pop("rank_outcomes")
    record.complete(merged)
    protocol.finish_record(spec, record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
