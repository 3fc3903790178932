"""The local launcher: this machine's GPUs as a pool, and the process of one cell (also what a Slurm job runs).

    pool        every usable GPU once (the runner's slots: NVML's GPUs narrowed by CUDA_VISIBLE_DEVICES), or the
                host when there are none. Groups start in grid order: the next group waits until `gpus` GPUs are
                free, takes them, and gives them back when its last cell is done; nothing overtakes it, so a 2-GPU
                cell is not starved by a stream of 1-GPU cells. On the host one cell runs at a time, whatever its
                `gpus` (a cell of N ranks then runs N CPU processes over gloo).
                --cells-per-gpu N lets up to N cells share each GPU (or the host): for accuracy grids of small
                models, where a cell's process start costs more than its training; their throughput and memory
                are then not comparable with a cell run alone (each record says `cells_per_gpu`). A cell of
                several GPUs takes distinct ones.
    a process   the cell's command (bench/worker/protocol.py) in a new session, stdout and stderr to the cell's log; after its timeout the process,
                everything it started (torchrun's ranks live in sessions of their own) and its session are killed.

A Slurm job runs `run_process` on its node (bench/parent/launchers/slurm.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psutil

from bench.core import nvml
from bench.core.errors import BenchError
from bench.core.package import PACKAGE_PARENT
from bench.parent.launchers import Outcome, RunGroup, Slot
from bench.worker.protocol import cell_command

if TYPE_CHECKING:
    from bench.spec.cells import Cell
WAIT_S = 0.2  # how often a waiting group looks at the stop flag


class LocalLauncher:
    name = "local"

    def __init__(self, cells_per_gpu: int = 1) -> None:
        if cells_per_gpu < 1:
            raise BenchError(f"--cells-per-gpu is {cells_per_gpu}; it must be a whole number of at least 1.")
        self.cells_per_gpu = cells_per_gpu
        self._processes: dict[int, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def schedule(
        self, groups: list[list[Cell]], slots: list[Slot], run_group: RunGroup, stop: Callable[[], None]
    ) -> None:
        pool = _Pool([slot.gpu for slot in slots] * self.cells_per_gpu)
        with ThreadPoolExecutor(pool.size, thread_name_prefix="slot") as threads:
            futures = []
            try:
                for group in groups:
                    slot = pool.take(pool.needs(group[0]), self._stopping)
                    if slot is None:
                        break
                    futures.append(threads.submit(self._run_group, run_group, group, slot, pool))
                wait(futures)
            except KeyboardInterrupt:
                stop()  # the runner's: cells killed from here on stay unfinished, for --resume
                raise
            for future in futures:
                future.result()

    @staticmethod
    def _run_group(run_group: RunGroup, group: list[Cell], slot: Slot, pool: _Pool) -> None:
        try:
            run_group(group, slot)
        finally:
            pool.give(slot)

    def execute(self, cell: Cell, spec_path: Path, log_path: Path, slot: Slot, work_dir: Path) -> Outcome:
        command = cell_command(cell.gpus, spec_path)
        return run_process(command, process_env(slot.env()), log_path, cell.timeout_s, self)

    def unavailable_reason(self, cell: Cell, slots: list[Slot]) -> str | None:
        gpus = [slot.gpu for slot in slots if slot.gpu is not None]
        if gpus and cell.gpus > len(gpus) and cell.device != "cpu":
            return (
                f"the cell asks for {cell.gpus} GPUs and this machine offers {len(gpus)} (NVML, CUDA_VISIBLE_DEVICES)"
            )
        return None

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            for process in self._processes.values():
                kill_tree(process)

    # --- the processes this launcher started, so that stop() can end them ------------------------------------------
    def started(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes[process.pid] = process
            if self._stopping.is_set():  # stop() ran between the check before the start and the start
                kill_tree(process)

    def ended(self, process: subprocess.Popen) -> None:
        with self._lock:
            self._processes.pop(process.pid, None)


class _Pool:
    """Places for a cell: each GPU once per cell it may hold (None stands for the host); `take` waits, in call
    order, until enough distinct GPUs are free."""

    def __init__(self, units: list[nvml.Gpu | None]) -> None:
        self._all = units
        self._distinct = len(set(units))
        self._free = list(units)
        self._changed = threading.Condition()

    @property
    def size(self) -> int:
        return len(self._all)

    def needs(self, cell: Cell) -> int:
        """GPUs the cell takes: its `gpus`, at most all of them (a cell asking for more is skipped, not run); one
        unit on the host."""
        return 1 if None in self._all else min(cell.gpus, self._distinct)

    def _distinct_free(self, n: int) -> list[int] | None:
        """Indices into the free list of n places on distinct GPUs, the least busy GPUs first, then the lowest;
        None if there are not n."""
        def busy(unit: nvml.Gpu | None) -> int:
            return self._all.count(unit) - self._free.count(unit)

        picked: list[int] = []
        for i in sorted(range(len(self._free)), key=lambda i: (busy(self._free[i]), i)):
            unit = self._free[i]
            if all(self._free[j] != unit for j in picked):
                picked.append(i)
                if len(picked) == n:
                    return picked
        return None

    def take(self, n: int, stopping: threading.Event) -> Slot | None:
        with self._changed:
            while (picked := self._distinct_free(n)) is None:
                if stopping.is_set():
                    return None
                self._changed.wait(WAIT_S)
            taken = [self._free[i] for i in picked]
            self._free = [unit for i, unit in enumerate(self._free) if i not in picked]
        return Slot(tuple(unit for unit in taken if unit is not None))

    def give(self, slot: Slot) -> None:
        with self._changed:
            self._free += list(slot.gpus) or [None]
            self._free.sort(key=self._all.index)  # lowest GPUs first, so runs place cells the same way
            self._changed.notify_all()


def process_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment, the slot's CUDA_VISIBLE_DEVICES, and this package on PYTHONPATH."""
    python_path = os.pathsep.join(filter(None, [PACKAGE_PARENT, os.environ.get("PYTHONPATH")]))
    return {**os.environ, **overrides, "PYTHONPATH": python_path}


def run_process(
    command: list[str], env: dict[str, str], log_path: Path, timeout_s: float, launcher: LocalLauncher | None = None
) -> Outcome:
    """Run `command` in its own session, its output to `log_path`; kill it with everything it started after
    `timeout_s`. `launcher` (if given) is told of the process, so that its stop() can end it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group, killed whole on timeout
        )
    if launcher is not None:
        launcher.started(process)
    try:
        process.wait(timeout=timeout_s)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_tree(process)
        process.wait()
        timed_out = True
    finally:
        if launcher is not None:
            launcher.ended(process)
    return Outcome(timed_out, process.returncode)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the cell's process, every process it started (torchrun's ranks have sessions of their own) and its
    session (compile workers)."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
