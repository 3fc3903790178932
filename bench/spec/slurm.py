"""A grid's `slurm:` section: what each cell's job asks Slurm for (bench/parent/launchers/slurm.py submits them).

Validated where the grid is read, like every other field: a bad value is one sentence naming `slurm.<field>`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.core.package import PACKAGE_PARENT

if TYPE_CHECKING:
    from bench.spec.cells import Cell

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
