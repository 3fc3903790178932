"""The slurm launcher: each cell a Slurm job, submitted through submitit, writing into the shared run folder.

    python -m bench run --matrix grid.yaml --launcher slurm --slurm-partition gpu --slurm-constraint h100

A job runs on its node what the local launcher runs here (`python -m bench.worker <spec>`, or torchrun for
`gpus: N`), with the cell's timeout, on the GPUs Slurm gave it; the cell writes its record into the run folder, so
the run folder (and this checkout) must be on a file system the nodes share. This process waits for the jobs
(submitit polls sacct) and records the ones that end without a record: a job Slurm timed out is a `timeout`, one
it cancelled or that failed is an `error`, each naming the job and its state.

Cells equal but for batch size are submitted one after another, smallest first, so that an out-of-memory skips
the larger ones without queueing them; all other cells are in the queue at once (at most `max_jobs`).
`--resume` keeps every cell whose record exists, whichever job wrote it.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from bench.parent.launchers import Outcome, RunGroup, Slot
from bench.parent.launchers.local import run_process
from bench.spec.slurm import SlurmConfig
from bench.worker.protocol import cell_command

if TYPE_CHECKING:
    from bench.spec.cells import Cell

class SlurmLauncher:
    name = "slurm"

    def __init__(self, config: SlurmConfig) -> None:
        self.config = config
        self._jobs: dict[str, object] = {}  # submitit jobs not finished yet, by job id
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    cells_per_gpu = 1  # a job holds its GPUs alone

    def schedule(
        self, groups: list[list[Cell]], slots: list[Slot], run_group: RunGroup, stop: Callable[[], None]
    ) -> None:
        slot = Slot(where="slurm")
        with ThreadPoolExecutor(self.config.max_jobs, thread_name_prefix="slurm") as threads:
            futures = [threads.submit(run_group, group, slot) for group in groups]
            try:
                wait(futures)
            except KeyboardInterrupt:
                stop()  # the runner's: cells killed from here on stay unfinished, for --resume
                raise
            for future in futures:
                future.result()

    def unavailable_reason(self, cell: Cell, slots: list[Slot]) -> str | None:
        limit = self.config.gpus_per_node
        if limit is not None and cell.gpus > limit and cell.device != "cpu":
            return f"the cell asks for {cell.gpus} GPUs and slurm.gpus_per_node is {limit}"
        return None

    def submit(self, folder: Path, cell: Cell, spec_path: Path, log_path: Path):
        """Submit the cell's job (submitit's files under `folder`/<job id>) and return the submitit job."""
        import submitit

        executor = submitit.AutoExecutor(folder=folder / "%j", cluster=self.config.executor)
        executor.update_parameters(**self.config.job_parameters(cell))
        return executor.submit(
            run_on_node, cell_command(cell.gpus, spec_path), str(spec_path), str(log_path), cell.timeout_s
        )

    def execute(self, cell: Cell, spec_path: Path, log_path: Path, slot: Slot, work_dir: Path) -> Outcome:
        from submitit.core.utils import UncompletedJobError

        job = self.submit(work_dir / "slurm", cell, spec_path, log_path)
        with self._lock:
            self._jobs[job.job_id] = job
            if self._stopping.is_set():  # stop() ran while this job was being submitted
                job.cancel(check=False)
        try:
            return job.result()
        except UncompletedJobError as exc:
            state = job.state
            lines = str(exc).strip().splitlines()
            reason = f"Slurm job {job.job_id} ended in state {state} without a result" + (
                f": {lines[0]}" if lines else ""
            )
            return Outcome(timed_out=state.startswith("TIMEOUT"), returncode=None, reason=reason)
        finally:
            with self._lock:
                self._jobs.pop(job.job_id, None)

    def stop(self) -> None:
        """Cancel every job in the queue or running (their cells stay unfinished, for --resume)."""
        self._stopping.set()
        with self._lock:
            for job in self._jobs.values():
                job.cancel(check=False)


def run_on_node(command: list[str], spec_path: str, log_path: str, timeout_s: float) -> Outcome:
    """A job's body, on its node: note in the spec where it runs (the cell's process puts it in the record), then
    start the cell's process as the local launcher would (with the GPUs Slurm exposed, this package on PYTHONPATH)."""
    from bench.core import envinfo
    from bench.core.fileio import read_json, write_json
    from bench.parent.launchers.local import process_env

    spec = read_json(Path(spec_path))
    node = envinfo.capture()
    spec["node_env"] = {k: v for k, v in node.items() if k not in ("gpus", "gpu_count")}
    spec["slurm_job_id"] = os.environ.get("SLURM_JOB_ID") or _submitit_job_id()
    write_json(Path(spec_path), spec)
    return run_process(command, process_env({}), Path(log_path), timeout_s)


def _submitit_job_id() -> str | None:
    import submitit

    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return None
