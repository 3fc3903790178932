"""The live view of a run, on stderr: a rich progress bar (current cell, done / failed / skipped, elapsed,
remaining) and one line per finished cell. Without a terminal (CI, a pipe) rich prints the lines and the bar once,
at the end. "failed" counts every cell without a measurement: oom, error, timeout, diverged."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from bench.records.record import Record, counted_bytes

FAILED = ("oom", "error", "timeout", "diverged")
STYLES = {"ok": "green", "skipped": "dim", "oom": "yellow", "diverged": "yellow", "error": "red", "timeout": "red"}
GIB = 2**30


def summary_line(record: Record) -> str:
    """'ok       tiny-llama lora r=8 fp32 b4x64   41,200 tokens/s  peak 1.20 GiB' or the status and its reason.
    On a CPU, where no allocator keeps peaks, the memory is the counted one (parameters, gradients, optimizer
    state, saved tensors)."""
    status, label = record.status, record.label
    if status != "ok":
        return f"{status:<8} {label}  {record.reason or ''}"
    text = f"{status:<8} {label}  {record.train.get('tokens_per_s', 0):,.0f} tokens/s"
    peak = record.memory.get("peak_allocated_bytes")
    counted = counted_bytes(record.memory)
    text += f"  peak {peak / GIB:.2f} GiB" if peak else (f"  counted {counted / GIB:.2f} GiB" if counted else "")
    return text + _compile_warnings(record.train)


def _compile_warnings(train: dict) -> str:
    """What makes a compiled cell's speed not the compiled speed: graph breaks (its regions ran in pieces), graphs
    compiled while it was timed, and dynamo's recompile limit reached (code ran eagerly from then on)."""
    notes = []
    if train.get("graph_breaks"):
        notes.append(f"{train['graph_breaks']} graph breaks")
    if train.get("recompiles_measured"):
        notes.append(f"{train['recompiles_measured']} recompiles while timed")
    if train.get("recompile_limit_hits"):
        notes.append(f"dynamo's recompile limit hit {train['recompile_limit_hits']} times (code ran eagerly after)")
    return f"  ({', '.join(notes)}: not the compiled speed)" if notes else ""


class RunProgress:
    def __init__(self, total: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/] {task.fields[skipped]} skipped"
            ),
            TimeElapsedColumn(),
            TextColumn("remaining"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("starting", total=total, ok=0, failed=0, skipped=0)
        self._running: list[str] = []
        self._counts = {"ok": 0, "failed": 0, "skipped": 0}
        self._lock = threading.Lock()

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def _describe(self) -> str:
        if not self._running:
            return "between cells"
        return self._running[-1] + (f" (+{len(self._running) - 1} more)" if len(self._running) > 1 else "")

    def started(self, label: str) -> None:
        with self._lock:
            self._running.append(label)
            self._progress.update(self._task, description=self._describe())

    def finished(self, label: str, record: Record) -> None:
        with self._lock:
            if label in self._running:
                self._running.remove(label)
            status = record.status
            self._counts["failed" if status in FAILED else status] += 1
            self._progress.console.print(summary_line(record), style=STYLES.get(status), markup=False, highlight=False)
            self._progress.update(self._task, advance=1, description=self._describe(), **self._counts)
