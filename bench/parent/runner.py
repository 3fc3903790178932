"""The parent: plans which cells to run, gives each its own process on its own GPUs, and records every outcome.

    slots       a cell's GPUs (CUDA_VISIBLE_DEVICES=<their UUIDs>, `gpus` of them, never shared), or the CPU;
                the launcher hands them out (bench/parent/launchers: this machine's pool, or a Slurm job per cell)
    groups      cells equal but for batch size run in one slot, smallest batch first: once one runs out of
                memory, the larger ones are recorded as skipped without being started
    a cell      spec file -> its process (`python -m bench.worker spec`, or torchrun's N ranks of it) in a new
                session -> its record, or, if the process dies or outlives its timeout (then it and everything
                it started are killed), a record saying so (bench/worker/protocol.py)
    the folder  held by one run at a time (a lock); its table is removed while cells change and rebuilt from the
                cell files at the end, so it is never stale

This process never touches torch.cuda (a CUDA context here would hold memory on every GPU): GPUs are found and
checked for other processes through NVML.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bench.core import envinfo, nvml
from bench.core.errors import BenchError
from bench.core.fileio import write_json, write_text
from bench.parent.launchers import Launcher, Slot
from bench.parent.launchers.local import LocalLauncher
from bench.parent.progress import RunProgress
from bench.records import table
from bench.records.folder import RunFolder, read_record
from bench.records.record import Record
from bench.spec.cells import Cell
from bench.spec.grid import Grid
from bench.spec.methods import METHODS
from bench.spec.quant import QUANTS
from bench.worker import protocol

MODES = ("new", "resume", "rerun-failed", "force")
KEPT_BY_RERUN_FAILED = ("ok", "oom", "diverged")  # outcomes that running again would not change
FAILED_STATUSES = ("error", "timeout")  # what makes `bench run` exit 1
LOG_TAIL_CHARS = 400
BUSY_CHECKS, BUSY_RECHECK_S = 3, 0.5


def slots_for(gpus: list[nvml.Gpu], visible: str | None) -> list[Slot]:
    """One slot per GPU the parent may use: all NVML GPUs, narrowed by CUDA_VISIBLE_DEVICES (indices or UUIDs)
    if set; one host slot when there are none."""
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip()]
        gpus = [g for g in gpus if any(w == str(g.index) or g.uuid.startswith(w) for w in wanted)]
    return [Slot((g,)) for g in gpus] or [Slot()]


@dataclass
class RunOptions:
    run_dir: Path
    mode: str = "new"
    profile: tuple[str, ...] | None = None  # None: no traces; (): every cell; else cells whose label/hash contains one
    measure_ceiling: bool = False
    only: tuple[str, ...] | None = None  # None: every cell the mode picks; else only those a selector matches
    argv: list[str] = field(default_factory=list)
    launcher: Launcher = field(default_factory=LocalLauncher)  # where cells run: this machine, or Slurm


@dataclass
class Summary:
    counts: dict[str, int]
    kept: int  # finished cells from an earlier invocation, not run again
    run_dir: Path
    table: Path | None

    @property
    def exit_code(self) -> int:
        return 1 if any(self.counts.get(s) for s in FAILED_STATUSES) else 0


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Runner:
    def __init__(self, grid: Grid, options: RunOptions, progress: RunProgress | None = None) -> None:
        if options.mode not in MODES:
            raise BenchError(f"mode is {options.mode!r}; allowed values are {', '.join(map(repr, MODES))}.")
        self.grid, self.options = grid, options
        self.folder = RunFolder(options.run_dir)
        self.env = envinfo.capture()
        self.slots = slots_for(nvml.gpus(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        self._progress = progress
        self._records, self._unreadable = self.folder.scan()
        self._kept: dict[str, Record] = {}  # records of this grid's cells that this run does not repeat
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # --- planning ------------------------------------------------------------------------------------------------
    def plan(self) -> tuple[list[Cell], list[Cell]]:
        """(cells to run, finished cells kept), by mode; refuses to mix a new run into a folder holding results."""
        mode, done = self.options.mode, self._records
        for flag, selectors in (("--only", self.options.only), ("--profile", self.options.profile)):
            check_selectors(self.grid.cells, selectors or (), flag)
        ours = [c for c in self.grid.cells if c.hash in done]
        if mode == "new" and (ours or self._unreadable):
            if not ours:
                first = next(iter(self._unreadable))
                raise BenchError(
                    f"run folder {self.folder.root} holds {len(self._unreadable)} unreadable record file(s) (first: "
                    f"{first.name}); pass --resume to set them aside and run their cells again."
                )
            raise BenchError(
                f"run folder {self.folder.root} already holds {len(ours)} results of this grid; pass --resume to skip "
                "finished cells, --rerun-failed to run the failed ones again, or --force to run every cell again."
            )
        if mode == "force":
            todo, kept = list(self.grid.cells), []
        else:
            keep = (lambda s: True) if mode == "resume" else (lambda s: s in KEPT_BY_RERUN_FAILED)
            kept = [c for c in ours if keep(done[c.hash].status)]
            self._kept = {c.hash: done[c.hash] for c in kept}
            todo = [c for c in self.grid.cells if c not in kept]
        if self.options.only is not None:
            todo = [c for c in todo if selects(c, self.options.only)]
        return todo, kept

    @staticmethod
    def groups(cells: list[Cell]) -> list[list[Cell]]:
        """Cells by `Cell.group`, in grid order, each group sorted by batch size."""
        grouped: dict[str, list[Cell]] = {}
        for cell in cells:
            grouped.setdefault(cell.group, []).append(cell)
        return [sorted(g, key=lambda c: c.batch_size) for g in grouped.values()]

    # --- running -------------------------------------------------------------------------------------------------
    def run(self) -> Summary:
        with self.folder.lock():
            self._records, self._unreadable = self.folder.scan()  # as they are now that the folder is ours
            todo, kept = self.plan()
            self._set_aside_unreadable()
            run_info = self._prepare_folder()
            progress = self._progress or RunProgress(len(todo))
            counts: dict[str, int] = {}

            def run_group(group: list[Cell], slot: Slot) -> None:
                self.run_group(group, slot, counts)

            try:
                with progress:
                    self._progress = progress
                    self.options.launcher.schedule(self.groups(todo), self.slots, run_group, self.stop)
            except KeyboardInterrupt:
                self._stopping.set()
                self._write_table()
                raise
            finished = time.time()
            run_info.update(finished_at=_now(), wall_s=finished - run_info.pop("started_at_s"))
            write_json(self.folder.root / "run.json", {**run_info, "env": self.env})
            return Summary(counts, len(kept), self.folder.root, self._write_table())

    def _write_table(self) -> Path | None:
        records = list(self.folder.records().values())
        return table.write_table(self.folder, records)[0] if records else None

    def _set_aside_unreadable(self) -> None:
        """A record file cut short or edited by hand: a cell of this grid runs again (the file is kept aside);
        any other mode than --resume / --force / --rerun-failed has already refused the folder."""
        for path, reason in self._unreadable.items():
            aside = self.folder.set_aside(path)
            print(f"warning: {reason.split(';')[0]}; set aside as {aside.name}, its cell counts as not finished")

    def stop(self) -> None:
        """Start no more cells and kill the running ones (their cells stay unfinished, for --resume)."""
        self._stopping.set()
        self.options.launcher.stop()

    def _prepare_folder(self) -> dict:
        """Write grid.yaml and run.json; returns run.json's fields (and the start time) to complete at the end."""
        self.folder.root.mkdir(parents=True, exist_ok=True)
        table.remove_tables(self.folder)  # cells are about to change: no table older than its cell files
        write_text(self.folder.root / "grid.yaml", self.grid.text)
        run_info = {
            "grid": self.grid.source,
            "argv": self.options.argv,
            "started_at": _now(),
            "mode": self.options.mode,
            "launcher": self.options.launcher.name,
        }
        write_json(self.folder.root / "run.json", {**run_info, "env": self.env})
        return {**run_info, "started_at_s": time.time()}

    def run_group(self, group: list[Cell], slot: Slot, counts: dict[str, int]) -> None:
        """The cells of one group, in order, on `slot` (launchers call this); counts their statuses."""
        oom_at: Cell | None = None
        for cell in group:
            if self._stopping.is_set():
                return
            record = self._run_cell(cell, slot, oom_at)
            if record is None:  # interrupted: the cell stays unfinished
                return
            if record.status == "oom" and oom_at is None:
                oom_at = cell
            with self._lock:
                counts[record.status] = counts.get(record.status, 0) + 1

    def _skip_reason(self, cell: Cell, oom_at: Cell | None) -> str | None:
        if oom_at is not None:
            return f"batch size {oom_at.batch_size} of the same configuration ran out of memory (cell {oom_at.hash})"
        smaller_oom = [
            r
            for r in self._kept.values()
            if r.status == "oom"
            and r.cell["batch_size"] < cell.batch_size
            and Cell.from_dict(r.cell).group == cell.group
        ]
        if smaller_oom:
            return f"batch size {smaller_oom[0].cell['batch_size']} of the same configuration ran out of memory"
        return (
            METHODS[cell.method.name].unavailable_reason()
            or QUANTS[cell.quant].unavailable_reason()
            or self.options.launcher.unavailable_reason(cell, self.slots)
        )

    def _run_cell(self, cell: Cell, slot: Slot, oom_at: Cell | None) -> Record | None:
        env = {k: v for k, v in self.env.items() if k != "gpus"}
        env["gpus"] = [nvml.describe(gpu.uuid) for gpu in slot.gpus]  # the cell's process corrects these three
        env["gpu"], env["gpu_count"] = (env["gpus"][0] if slot.gpus else None), len(slot.gpus)
        others = _other_processes(slot)
        run = {
            "run_name": self.folder.root.name,
            "slot": slot.name,
            "started_at": _now(),
            "gpu_busy": bool(others),
            "cells_per_gpu": self.options.launcher.cells_per_gpu,
            "gpu_processes": others,
            "log": str(self.folder.log_path(cell.hash)),
        }
        record = Record.new(cell, env, run)
        self._progress.started(cell.label())
        skip = self._skip_reason(cell, oom_at)
        if skip:
            record.fail("skipped", skip)
            write_json(self.folder.result_path(cell.hash), record.to_dict())
        else:
            record = self._spawn(cell, slot, record)
        if record is not None:
            self._progress.finished(cell.label(), record)
        return record

    def _spawn(self, cell: Cell, slot: Slot, record: Record) -> Record | None:
        """Run the cell's process and return its record (None if the run was interrupted meanwhile)."""
        result_path, log_path = self.folder.result_path(cell.hash), self.folder.log_path(cell.hash)
        result_path.unlink(missing_ok=True)  # --force / --rerun-failed: the old record must not pass for a new one
        spawned_at = time.time()
        spec_path = self._write_spec(cell, slot, record, spawned_at)
        outcome = self.options.launcher.execute(cell, spec_path, log_path, slot, self.folder.root)
        if result_path.exists():  # finished, even if the timeout struck just after
            try:
                return read_record(result_path)
            except BenchError as exc:
                record.fail("error", f"the cell's process wrote a record that cannot be read: {exc}")
                write_json(result_path, record.to_dict())
                return record
        if self._stopping.is_set():
            return None  # nothing written: the cell is unfinished and --resume will run it
        if outcome.timed_out:
            reason = outcome.reason or f"no result after {cell.timeout_s:g} s; the cell's processes were killed"
            record.fail("timeout", reason)
        else:
            record.fail("error", outcome.reason or _died_reason(outcome.returncode, log_path))
        record.run["wall_s"] = time.time() - spawned_at
        write_json(result_path, record.to_dict())
        return record

    def _write_spec(self, cell: Cell, slot: Slot, record: Record, spawned_at: float) -> Path:
        """The cell process's whole input (bench/worker/protocol.py): the cell, how to run it, the record."""
        options = {
            "profile_dir": str(self.folder.profile_dir(cell.hash)) if self._profiled(cell) else None,
            "measure_ceiling": self.options.measure_ceiling,
        }
        path = self.folder.spec_path(cell.hash)
        protocol.write_spec(path, cell, record, self.folder.result_path(cell.hash), options, spawned_at)
        return path

    def _profiled(self, cell: Cell) -> bool:
        selectors = self.options.profile
        return selectors is not None and (not selectors or selects(cell, selectors))


def selects(cell: Cell, selectors: tuple[str, ...]) -> bool:
    """Whether a selector of --profile / --only names the cell: a part of its label or the start of its hash."""
    return any(s in cell.label() or cell.hash.startswith(s) for s in selectors)


def check_selectors(cells: list[Cell], selectors: tuple[str, ...], flag: str) -> None:
    """Refuses a selector that names no cell of the grid (a typo would otherwise run or profile nothing)."""
    for selector in selectors:
        if not any(selects(c, (selector,)) for c in cells):
            raise BenchError(
                f"{flag} {selector!r} names no cell of this grid; give a part of a cell's label or the start of its "
                "hash, as `python -m bench run --matrix GRID --dry-run` lists them."
            )


def _other_processes(slot: Slot) -> list[dict]:
    """Processes holding memory on the slot's GPUs. Asked a few times when there are some: the driver may list
    the previous cell's processes for a moment after they exited."""
    if not slot.gpus:
        return []

    def holding() -> list[dict]:
        return [p for gpu in slot.gpus for p in nvml.processes(gpu.uuid)]

    for _ in range(BUSY_CHECKS - 1):
        found = holding()
        if not found:
            return found
        time.sleep(BUSY_RECHECK_S)
    return holding()


def _died_reason(returncode: int, log_path: Path) -> str:
    how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with code {returncode}"
    try:
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        lines = []
    tail = f"; its log ends: {lines[-1][-LOG_TAIL_CHARS:]}" if lines else ""
    return f"the cell's process {how} without writing a result{tail}"
