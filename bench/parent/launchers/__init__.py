"""Launchers: how the cells of a run reach processes and machines, behind one interface.

    local       this machine: its GPUs are a pool; a cell takes `gpus` of them (CUDA_VISIBLE_DEVICES=<their UUIDs>)
                and never shares one; cells start in grid order as soon as enough GPUs are free
    slurm       a Slurm cluster, through submitit: each cell is a job, which on its node starts the cell's process
                as `local` would here

and, under either, the process of one cell (bench/worker/protocol.py `cell_command`):

    gpus: 1     python -m bench.worker <spec>
    gpus: N     python -m bench.worker.agent <spec>: torchrun's agent, starting N ranks of bench.worker

A launcher is a `Launcher`. It knows callables and slots, never the runner: `schedule` hands every group of
cells to the `run_group` it is given, with a `Slot`; `execute` runs one cell's process to its end and says how it
ended (`Outcome`); `stop` ends what it started. The runner (bench/parent/runner.py) does the rest the same way
for every launcher: what to run, spec files, records, statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol

from bench.core import nvml
from bench.core.errors import BenchError

if TYPE_CHECKING:
    from bench.spec.cells import Cell

RunGroup = Callable[[list["Cell"], "Slot"], None]  # runs a group of cells, in order, on a slot

LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class Slot:
    """Where a cell runs: some GPUs of this machine (by NVML UUID), or none: the CPU, or a machine the launcher
    picks (`where` names it: "host", "slurm")."""

    gpus: tuple[nvml.Gpu, ...] = ()
    where: str = "host"

    @property
    def gpu(self) -> nvml.Gpu | None:
        """The first GPU: rank 0's."""
        return self.gpus[0] if self.gpus else None

    @property
    def name(self) -> str:
        return "+".join(f"gpu{gpu.index}" for gpu in self.gpus) or self.where

    def env(self) -> dict[str, str]:
        return {"CUDA_VISIBLE_DEVICES": ",".join(gpu.uuid for gpu in self.gpus)} if self.gpus else {}


@dataclass(frozen=True)
class Outcome:
    """How a cell's process ended. The runner reads the cell's record if there is one; if not, this says why."""

    timed_out: bool
    returncode: int | None
    reason: str | None = None  # set when the launcher knows more than an exit status (a Slurm job's state)


class Launcher(Protocol):
    name: str
    cells_per_gpu: int  # cells that may share one GPU (recorded with every cell)

    def schedule(self, groups: list[list[Cell]], slots: list[Slot], run_group: RunGroup, stop: Callable[[], None]) -> None:
        """Run every group through `run_group(group, slot)`; return when all are done. On KeyboardInterrupt, call
        `stop` (the caller's: it marks the run as stopping, then ends what runs) and re-raise."""

    def execute(self, cell: Cell, spec_path: Path, log_path: Path, slot: Slot, work_dir: Path) -> Outcome:
        """Run the cell's process on `slot`, its output to `log_path`, to its end or timeout; the launcher may
        keep files of its own under `work_dir`."""

    def unavailable_reason(self, cell: Cell, slots: list[Slot]) -> str | None:
        """Why the cell cannot run under this launcher (it is then recorded as skipped), or None."""

    def stop(self) -> None:
        """Start nothing more and end what runs (the cells stay unfinished, for --resume)."""


# `bench run`'s --slurm-* flags: (flag, SlurmConfig field, type, help)
SLURM_FLAGS = (
    ("--slurm-partition", "partition", str, "the partition (sbatch --partition)"),
    ("--slurm-constraint", "constraint", str, "node features, on most clusters the GPU type, e.g. h100"),
    ("--slurm-time", "time", str, "a job's time limit: minutes or [D-]HH:MM:SS (default: the cell's timeout + 10 min)"),
    ("--slurm-gpus-per-node", "gpus_per_node", int, "GPUs per job (default: the cell's `gpus`)"),
    ("--slurm-cpus-per-task", "cpus_per_task", int, "CPUs per job (default: the cluster's)"),
    ("--slurm-account", "account", str, "the account to charge (sbatch --account)"),
    ("--slurm-max-jobs", "max_jobs", int, "jobs in the queue at once (default: 64)"),
    ("--slurm-executor", "executor", str, "slurm, or local: submitit's LocalExecutor, jobs as processes here"),
)


def add_arguments(parser) -> None:
    """--launcher and the --slurm-* flags of `bench run`."""
    parser.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="local",
        help="local: this machine's GPUs as a pool (default); slurm: each cell a Slurm job, through submitit",
    )
    parser.add_argument(
        "--cells-per-gpu",
        type=int,
        default=1,
        metavar="N",
        help="with --launcher local: run up to N cells at once on each GPU (default 1). For grids of small models "
        "(accuracy), where starting a cell's process costs more than its training; the throughput and memory of "
        "cells that share a GPU are not comparable with those of a cell run alone",
    )
    group = parser.add_argument_group("slurm", "with --launcher slurm; each flag overrides the grid's slurm: section")
    for flag, field, kind, help_text in SLURM_FLAGS:
        group.add_argument(flag, type=kind, metavar=field.upper(), help=help_text)


def from_arguments(args, grid_slurm) -> Launcher:
    """The launcher `bench run` asked for; the slurm launcher's settings are the grid's, overridden by flags."""
    if args.launcher == "local":
        from bench.parent.launchers.local import LocalLauncher

        return LocalLauncher(args.cells_per_gpu)
    if args.cells_per_gpu != 1:
        raise BenchError("--cells-per-gpu applies to --launcher local only; a Slurm job holds its GPUs alone.")
    import dataclasses
    import importlib.util
    import shutil

    from bench.parent.launchers.slurm import SlurmLauncher
    from bench.spec.slurm import SlurmFieldError

    if importlib.util.find_spec("submitit") is None:
        raise BenchError("--launcher slurm needs the submitit package: pip install -e '.[slurm]'.")

    flags = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _, _ in SLURM_FLAGS}
    try:
        config = dataclasses.replace(grid_slurm, **{k: v for k, v in flags.items() if v is not None})
    except SlurmFieldError as exc:
        flag = next((f for f, field, _, _ in SLURM_FLAGS if field == exc.field), f"slurm.{exc.field}")
        raise BenchError(f"{flag} {exc}") from None
    if config.executor == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise BenchError(
            "--launcher slurm finds no sbatch and srun on PATH; run it on a Slurm login node, "
            "or try the path here with --slurm-executor local."
        )
    return SlurmLauncher(config)
