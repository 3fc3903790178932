"""The result of one cell: a typed record, written by one process and read by everything after it.

Who writes which field:
    the parent (`Record.new`)        schema_version, cell_hash, label, cell, env (the host's), run (where, when)
    the cell's process (`complete`)  status, reason, traceback, train, memory, task_metrics, device, the GPU part
                                     of env, run.finished_at / run.wall_s
    the parent (`fail`)              status and reason of a cell whose process died without a word
A record is stored as JSON (`to_dict`), one file per cell (bench/records/folder.py); `from_dict` refuses a file
that is not a record with one sentence naming what is wrong.

The sections keep the names of the table's columns (bench/records/table.py):
    cell          the resolved cell (bench/spec/cells.py `Cell.to_dict`)
    train         steps, times, throughput, FLOPs, loss        memory   peaks and counted bytes
    task_metrics  an accuracy task's metrics                   device   torch's view of the device
    env           host, packages, git, GPUs                    run      run name, slot, times, log, sharing
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from bench.core.errors import BenchError

SCHEMA_VERSION = 1
STATUSES = ("ok", "oom", "error", "timeout", "diverged", "skipped")
SECTIONS = ("cell", "train", "memory", "task_metrics", "device", "env", "run")
# The fields a cell's process sets from its outcome (bench/worker/measure.py `run`).
OUTCOME_FIELDS = ("status", "reason", "traceback", "train", "memory", "task_metrics", "device")
# Fields of `memory` that add up to what a training step holds at once (counted on the CPU, see `counted_bytes`).
COUNTED_FIELDS = ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes")


class RecordError(BenchError):
    """A mapping that is not a cell record; the message says what is missing or wrong."""


@dataclass
class Record:
    cell_hash: str
    label: str
    cell: dict
    status: str | None = None  # None until the cell has run
    reason: str = ""
    traceback: str | None = None
    train: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    task_metrics: dict = field(default_factory=dict)
    device: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def new(cls, cell, env: dict, run: dict) -> Record:
        """The record of `cell` (a `Cell`) before it runs."""
        return cls(cell.hash, cell.label(), cell.to_dict(), env=dict(env), run=dict(run))

    def complete(self, outcome: dict) -> None:
        """Take the cell process's outcome (status, reason, traceback and the measurement sections)."""
        for name in OUTCOME_FIELDS:
            if name in outcome:
                setattr(self, name, outcome[name])

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    @property
    def started_at(self) -> str:
        return self.run.get("started_at") or ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data) -> Record:
        if not isinstance(data, dict):
            raise RecordError(f"is a JSON {type(data).__name__}, not a cell record")
        missing = [name for name in ("cell_hash", "label", "cell", "status") if name not in data]
        if missing:
            raise RecordError(f"lacks the field(s) {', '.join(missing)} of a cell record")
        if data["status"] not in STATUSES:
            raise RecordError(f"has status {data['status']!r}; a finished record has one of {', '.join(STATUSES)}")
        for name in SECTIONS:
            if not isinstance(data.get(name) or {}, dict):
                raise RecordError(f"has a {type(data[name]).__name__} as {name!r}, where a mapping belongs")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in SECTIONS:
            values[name] = dict(values.get(name) or {})
        return cls(**values)


def counted_bytes(memory: dict) -> int | None:
    """param_bytes + grad_bytes + optimizer_bytes + activation_bytes of a record's `memory`; None if one is missing.

    An upper bound on the tensors a training step holds at once (the saved activations are freed while the
    gradients fill in), counted rather than sampled: exactly reproducible, unlike a sampled RSS.
    """
    parts = [memory.get(name) for name in COUNTED_FIELDS]
    return None if any(p is None for p in parts) else sum(parts)


def device_class(record: Record) -> str:
    """'cpu', or the name of the GPU the cell ran on (NVML's, e.g. 'NVIDIA H200')."""
    device = record.device.get("device")
    gpu = record.env.get("gpu") or {}
    if device == "cpu" or not (gpu.get("gpu_name") or device == "cuda"):
        return "cpu"
    return gpu.get("gpu_name") or record.device.get("device_name") or "cuda"
