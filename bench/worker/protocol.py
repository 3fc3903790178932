"""The protocol between the parent and a cell's processes: a spec file in, a record file out, an exit status.

    spec      specs/<hash>.json, written by the parent (`write_spec`) before it starts the cell's process:
              {cell, options: {profile_dir, measure_ceiling}, record, result_path, spawned_at} and, from a Slurm
              job on its node, {node_env, slurm_job_id}: what the record's env and run then say
    record    cells/<hash>.json, written atomically by the cell's process (`finish_record`) when it has an
              outcome; no record means the process died, and the parent records that instead
    ranks     a cell of N GPUs: a rank that fails writes its own outcome to `rank_outcome_path` and exits 1;
              the torchrun agent (bench/worker/agent.py) then writes the record from those outcomes
    orphans   every cell process watches its parent and exits without a record when it is gone, so that
              `--resume` runs the cell again instead of finding a half-finished one
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.core.fileio import read_json, write_json
from bench.records.record import Record

ORPHAN_CHECK_S = 1.0
ENTRY = "bench.worker"  # `python -m bench.worker <spec>`: one cell process, or one rank of it
AGENT = "bench.worker.agent"  # `python -m bench.worker.agent <spec>`: torchrun's agent for a cell of N GPUs


def cell_command(gpus: int, spec_path: Path) -> list[str]:
    """The command line of one cell's process: the cell itself, or torchrun's agent for a cell of several GPUs."""
    return [sys.executable, "-m", AGENT if gpus > 1 else ENTRY, str(spec_path)]


def write_spec(path: Path, cell, record: Record, result_path: Path, options: dict, spawned_at: float) -> None:
    write_json(path, {
        "cell": cell.to_dict(),
        "options": options,
        "record": record.to_dict(),
        "result_path": str(result_path),
        "spawned_at": spawned_at,
    })


def read_spec(path: Path) -> dict:
    return read_json(path)


def record_of(spec: dict) -> Record:
    """The spec's record skeleton, with what a Slurm job noted on its node."""
    record = Record(**{k: v for k, v in spec["record"].items()})
    if spec.get("node_env"):
        record.env.update(spec["node_env"])
    if spec.get("slurm_job_id"):
        record.run["slurm_job_id"] = spec["slurm_job_id"]
    return record


def rank_outcome_path(spec_path: Path, rank: int) -> Path:
    return spec_path.with_name(f"{spec_path.stem}.rank{rank}.json")


def finish_record(spec: dict, record: Record) -> None:
    """Stamp the record's end and write it, atomically, where the parent looks for it."""
    record.run["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record.run["wall_s"] = time.time() - spec["spawned_at"]
    write_json(Path(spec["result_path"]), record.to_dict())


def exit_when_orphaned(parent_pid: int) -> None:
    """Exit (status 3, no record) as soon as the process that started this one is gone."""

    def watch() -> None:
        while True:
            time.sleep(ORPHAN_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()
