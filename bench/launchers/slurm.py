"""The slurm launcher: each cell a Slurm job, submitted through submitit, writing into the shared run folder.

    python -m bench run --matrix grid.yaml --launcher slurm --slurm-partition gpu --slurm-constraint h100

A job runs on its node what the local launcher runs here (`python -m bench._child <spec>`, or torchrun for
`gpus: N`), with the cell's timeout, on the GPUs Slurm gave it; the cell writes its record into the run folder, so
the run folder (and this checkout) must be on a file system the nodes share. This process waits for the jobs
(submitit polls sacct) and records the ones that end without a record: a job Slurm timed out is a `timeout`, one
it cancelled or that failed is an `error`, each naming the job and its state.

Cells equal but for batch size are submitted one after another, smallest first, so that an out-of-memory skips
the larger ones without queueing them; all other cells are in the queue at once (at most `max_jobs`).
`--resume` keeps every cell whose record exists, whichever job wrote it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shlex
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import Outcome, Slot, cell_command
from .local import PACKAGE_PARENT, run_process

if TYPE_CHECKING:
    from ..cells import Cell
    from ..runner import Runner

EXECUTORS = ("slurm", "local")
MARGIN_MIN = 10  # a job's default time limit is its cell's timeout plus this: start-up, imports, the model's build
TIME = re.compile(r"(?:(?P<days>\d+)-)?(?P<hours>\d+):(?P<minutes>\d{2}):(?P<seconds>\d{2})")


class SlurmFieldError(ValueError):
    """A Slurm setting that is not valid: `field` names it, the message completes 'slurm.<field> ...'."""

    def __init__(self, field: str, clause: str) -> None:
        super().__init__(clause)
        self.field = field


def _optional(field: str, value, kind: type, minimum: int | None = None):
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) or (minimum is not None and value < minimum):
        what = f"an integer >= {minimum}" if kind is int else "a string"
        raise SlurmFieldError(field, f"is {value!r}; it must be {what}.")
    return value


def time_minutes(value) -> int | None:
    """A Slurm time limit in whole minutes (rounded up): minutes (90) or [D-]HH:MM:SS ("1:30:00", "2-00:00:00")."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    match = TIME.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise SlurmFieldError("time", f"is {value!r}; write minutes (90) or [D-]HH:MM:SS (1:30:00, 2-00:00:00).")
    days, hours, minutes, seconds = (int(match[k] or 0) for k in ("days", "hours", "minutes", "seconds"))
    return max(1, math.ceil(((days * 24 + hours) * 60 + minutes) + seconds / 60))


@dataclass(frozen=True)
class SlurmConfig:
    """What the jobs ask Slurm for: the grid's `slurm:` section, overridden by --slurm-* flags."""

    partition: str | None = None  # sbatch --partition
    constraint: str | None = None  # sbatch --constraint: node features, on most clusters the GPU type ("h100")
    time: str | int | None = None  # the job's time limit; default: the cell's timeout_s plus MARGIN_MIN
    gpus_per_node: int | None = None  # GPUs per job; default: the cell's `gpus` (none for device: cpu)
    cpus_per_task: int | None = None  # sbatch --cpus-per-task; default: the cluster's
    account: str | None = None  # sbatch --account
    max_jobs: int = 64  # jobs in the queue at once
    executor: str = "slurm"  # "local": submitit's LocalExecutor, each job a process here (no cluster needed)

    def __post_init__(self) -> None:
        for name in ("partition", "constraint", "account"):
            _optional(name, getattr(self, name), str)
        time_minutes(self.time)
        _optional("gpus_per_node", self.gpus_per_node, int, minimum=0)
        _optional("cpus_per_task", self.cpus_per_task, int, minimum=1)
        _optional("max_jobs", self.max_jobs, int, minimum=1)
        if self.executor not in EXECUTORS:
            raise SlurmFieldError(
                "executor", f"is {self.executor!r}; allowed values are {', '.join(map(repr, EXECUTORS))}."
            )

    @classmethod
    def from_dict(cls, data: dict) -> SlurmConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise SlurmFieldError(str(key), f"is not a Slurm setting; allowed settings are {', '.join(known)}.")
        return cls(**data)

    def job_parameters(self, cell: Cell) -> dict:
        """submitit's AutoExecutor parameters of the cell's job."""
        gpus = 0 if cell.device == "cpu" else (self.gpus_per_node if self.gpus_per_node is not None else cell.gpus)
        setup = [f"export PYTHONPATH={shlex.quote(PACKAGE_PARENT)}${{PYTHONPATH:+:$PYTHONPATH}}"]
        parameters = {
            "name": f"bench-{cell.hash}",
            "timeout_min": time_minutes(self.time) or math.ceil(cell.timeout_s / 60) + MARGIN_MIN,
            "nodes": 1,
            "tasks_per_node": 1,  # one process; torchrun starts the ranks of a cell of several GPUs
            "slurm_setup": setup,
            "local_setup": setup,
        }
        optional = {
            "gpus_per_node": gpus or None,
            "slurm_partition": self.partition,
            "slurm_constraint": self.constraint,
            "slurm_account": self.account,
            "cpus_per_task": self.cpus_per_task,
        }
        return {**parameters, **{k: v for k, v in optional.items() if v is not None}}


class SlurmLauncher:
    name = "slurm"

    def __init__(self, config: SlurmConfig) -> None:
        self.config = config
        self._jobs: dict[str, object] = {}  # submitit jobs not finished yet, by job id
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def schedule(self, runner: Runner, groups: list[list[Cell]], counts: dict[str, int]) -> None:
        slot = Slot(where="slurm")
        with ThreadPoolExecutor(self.config.max_jobs, thread_name_prefix="slurm") as threads:
            futures = [threads.submit(runner.run_group, group, slot, counts) for group in groups]
            try:
                wait(futures)
            except KeyboardInterrupt:
                runner.stop()
                raise
            for future in futures:
                future.result()

    def unavailable_reason(self, runner: Runner, cell: Cell) -> str | None:
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
            run_on_node, cell_command(cell, spec_path), str(spec_path), str(log_path), cell.timeout_s
        )

    def execute(self, runner: Runner, cell: Cell, spec_path: Path, log_path: Path, slot: Slot) -> Outcome:
        from submitit.core.utils import UncompletedJobError

        job = self.submit(runner.folder.root / "slurm", cell, spec_path, log_path)
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
    """A job's body, on its node: note in the cell's record where it runs, then start the cell's process as the
    local launcher would (with the GPUs Slurm exposed, and this package on PYTHONPATH)."""
    from .. import envinfo, results
    from .local import process_env

    spec = results.read_json(Path(spec_path))
    node = envinfo.capture()
    spec["record"]["env"].update({k: v for k, v in node.items() if k not in ("gpus", "gpu_count")})
    spec["record"]["run"]["slurm_job_id"] = os.environ.get("SLURM_JOB_ID") or _submitit_job_id()
    results.write_json(Path(spec_path), spec)
    return run_process(command, process_env({}), Path(log_path), timeout_s)


def _submitit_job_id() -> str | None:
    import submitit

    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:
        return None
