"""`python -m bench check`: the memory of a run's cells against a committed baseline, a gate for CI.

    measure     on a GPU, torch's max_memory_allocated over the measured steps (`peak_allocated_bytes`); on a CPU,
                where no allocator keeps peaks, `counted_bytes`: parameters + gradients + optimizer state + the
                tensors saved for backward, counted from the tensors themselves, so the same code gives the
                same number on every run and every machine
    baseline    reports/baselines/<device class>.json, one per device class ("cpu", or the GPU's NVML name such as
                "NVIDIA H200"), cells keyed by `memory_key`: the cell's identity without the fields that cannot
                change its memory (steps, lr, ...), so a longer run of the same configuration still matches
    verdict     a cell regresses when its measure exceeds baseline + atol_bytes + rtol × baseline, or when it ran
                out of memory where the baseline fits; one line per cell that needs a look, exit 1 on any
                regression or unmeasured cell; cells new to or missing from the run are listed but pass

A baseline file: {version, device_class, metric, rtol, atol_bytes, origin: {runs, created_at, git_commit, git_dirty,
torch/transformers/peft versions, hostname}, cells: {memory_key: {label, status, bytes}}}, cells sorted by label.
`--update-baseline` rewrites the baseline of each device class in the runs, on purpose (review the diff).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .cells import NOT_HASHED, Cell, stable_hash
from .errors import BenchError
from .results import RunFolder, read_json, write_json

BASELINE_VERSION = 1
CI_GRID = "ci-memory"  # what `bench check` runs when given no run folder
# Fields of a cell that change how long or how it is timed, never which tensors exist at once.
NOT_MEMORY = (*NOT_HASHED, "steps", "warmup_steps", "lr", "head_lr", "device")
COUNTED_FIELDS = ("param_bytes", "grad_bytes", "optimizer_bytes", "activation_bytes")
GPU_METRIC, CPU_METRIC = "peak_allocated_bytes", "counted_bytes"
# (rtol, atol_bytes) a new baseline gets: the CPU measure is exact, so only a real change moves it; a GPU
# allocator's peak moves by a few blocks and workspaces between driver and library versions.
DEFAULT_TOLERANCE = {CPU_METRIC: (0.01, 0), GPU_METRIC: (0.01, 16 * 2**20)}
FAILED = ("error", "timeout", "diverged")  # statuses that measured nothing and say nothing about memory


def counted_bytes(memory: dict) -> int | None:
    """param_bytes + grad_bytes + optimizer_bytes + activation_bytes of a record's `memory`; None if one is missing.

    An upper bound on the tensors a training step holds at once (the saved activations are freed while the
    gradients fill in), counted rather than sampled: exactly reproducible, unlike a sampled RSS.
    """
    parts = [memory.get(name) for name in COUNTED_FIELDS]
    return None if any(p is None for p in parts) else sum(parts)


def memory_key(cell: dict) -> str:
    """A stable hash of the cell's fields that decide its memory: `Cell.identity()` without NOT_MEMORY."""
    identity = Cell.from_dict(cell).identity()
    return stable_hash({k: v for k, v in identity.items() if k not in NOT_MEMORY})


def device_class(record: dict) -> str:
    """'cpu', or the name of the GPU the cell ran on (NVML's, e.g. 'NVIDIA H200')."""
    device = (record.get("device") or {}).get("device")
    gpu = (record.get("env") or {}).get("gpu") or {}
    if device == "cpu" or not (gpu.get("gpu_name") or device == "cuda"):
        return "cpu"
    return gpu.get("gpu_name") or (record.get("device") or {}).get("device_name") or "cuda"


def metric_for(device: str) -> str:
    return CPU_METRIC if device == "cpu" else GPU_METRIC


def measure(record: dict, metric: str) -> int | None:
    memory = record.get("memory") or {}
    return counted_bytes(memory) if metric == CPU_METRIC else memory.get(metric)


def baseline_path(directory: Path, device: str) -> Path:
    """reports/baselines/cpu.json, reports/baselines/nvidia-h200.json, ..."""
    return directory / (re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") + ".json")


@dataclass
class Baseline:
    device_class: str
    metric: str
    rtol: float
    atol_bytes: int
    cells: dict[str, dict]  # memory_key -> {"label", "status", "bytes"}
    origin: dict = field(default_factory=dict)  # the run it came from: folder, git commit, package versions

    @classmethod
    def read(cls, path: Path) -> Baseline:
        data = read_json(path)
        if data.get("version") != BASELINE_VERSION:
            raise BenchError(
                f"{path} has baseline version {data.get('version')!r}; this harness reads {BASELINE_VERSION}."
            )
        return cls(
            data["device_class"], data["metric"], data["rtol"], data["atol_bytes"], data["cells"], data["origin"]
        )

    def write(self, path: Path) -> None:
        cells = dict(sorted(self.cells.items(), key=lambda kv: (kv[1]["label"], kv[0])))  # diffs read by label
        write_json(
            path,
            {
                "version": BASELINE_VERSION,
                "device_class": self.device_class,
                "metric": self.metric,
                "rtol": self.rtol,
                "atol_bytes": self.atol_bytes,
                "origin": self.origin,
                "cells": cells,
            },
        )


@dataclass(frozen=True)
class Finding:
    kind: str  # regression | oom | unmeasured | new | missing | smaller | fits-now | ok
    label: str
    text: str

    @property
    def fails(self) -> bool:
        return self.kind in ("regression", "oom", "unmeasured")

    def line(self) -> str:
        return f"{self.kind.upper():<11} {self.label}: {self.text}"


def _fmt(n: int) -> str:
    return f"{n:,} B"


def compare(baseline: Baseline, records: list[dict], rtol: float, atol_bytes: int) -> list[Finding]:
    """A finding per cell of the run, in run order, then one per baseline cell the run lacks."""
    findings, seen = [], set()
    for record in records:
        key = memory_key(record["cell"])
        seen.add(key)
        findings.append(_finding(record, baseline.cells.get(key), baseline.metric, rtol, atol_bytes))
    findings += [
        Finding("missing", b["label"], "in the baseline, not in this run")
        for k, b in baseline.cells.items()
        if k not in seen
    ]
    return findings


def _finding(record: dict, base: dict | None, metric: str, rtol: float, atol_bytes: int) -> Finding:
    label, status, reason = record["label"], record["status"], record.get("reason") or ""
    value = measure(record, metric) if status == "ok" else None
    if status in FAILED or (status == "ok" and value is None):
        return Finding("unmeasured", label, f"{status}: {reason or f'the record has no {metric}'}")
    if base is None:
        what = _fmt(value) if value is not None else f"{status} ({reason})"
        return Finding("new", label, f"{what}; not in the baseline")
    if status != "ok" and base["status"] == "ok":
        kind = "oom" if status == "oom" else "unmeasured"
        return Finding(kind, label, f"{status} ({reason}); the baseline measured {_fmt(base['bytes'])}")
    if status != "ok":
        return Finding("ok", label, f"{status}, as in the baseline")
    if base["status"] != "ok":
        return Finding("fits-now", label, f"{_fmt(value)}; the baseline has {base['status']}")
    return _against(label, value, base["bytes"], rtol, atol_bytes)


def _against(label: str, value: int, base: int, rtol: float, atol_bytes: int) -> Finding:
    allowed = atol_bytes + rtol * base
    delta = value - base
    change = (
        f"{_fmt(value)}, baseline {_fmt(base)} ({delta:+,} B, {delta / base:+.2%}"
        if base
        else f"{_fmt(value)}, baseline 0 ({delta:+,} B"
    )
    if delta > allowed:
        return Finding("regression", label, f"{change}; allowed +{allowed:,.0f} B)")
    if -delta > allowed:
        return Finding("smaller", label, f"{change}); update the baseline to keep the gain")
    return Finding("ok", label, f"{change})")


def _origin(folders: list[RunFolder], records: list[dict]) -> dict:
    env = records[0].get("env") or {}
    keys = ("git_commit", "git_dirty", "torch_version", "transformers_version", "peft_version", "hostname")
    return {
        "runs": [str(f.root) for f in folders],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: env.get(k) for k in keys},
    }


def by_device(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: ((r.get("run") or {}).get("started_at") or "", r["label"])):
        grouped.setdefault(device_class(record), []).append(record)
    return grouped


def _records(folders: list[RunFolder]) -> list[dict]:
    records = [r for folder in folders for r in folder.records().values()]
    if not records:
        names = ", ".join(str(f.root) for f in folders)
        raise BenchError(f"run folder {names} holds no results; run a grid first (python -m bench run).")
    return records


def _names(folders: list[RunFolder]) -> str:
    return " ".join(str(f.root) for f in folders)


def update(folders: list[RunFolder], directory: Path, rtol: float | None, atol_bytes: int | None) -> list[Path]:
    """Write the baseline of each device class in the runs; refuses runs with failed cells or duplicate keys."""
    records = _records(folders)
    failed = [r["label"] for r in records if r["status"] in FAILED]
    if failed:
        raise BenchError(
            f"{len(failed)} cells of {_names(folders)} ended in {'/'.join(FAILED)} (first: {failed[0]}); "
            "rerun them (python -m bench run --rerun-failed) before taking a baseline from this run."
        )
    written = []
    for device, group in by_device(records).items():
        metric = metric_for(device)
        cells: dict[str, dict] = {}
        for record in group:
            key = memory_key(record["cell"])
            if key in cells:
                raise BenchError(
                    f"cells {cells[key]['label']!r} and {record['label']!r} of {_names(folders)} differ only in fields "
                    f"that do not change memory ({', '.join(NOT_MEMORY)}); keep one of them in the baseline's grid."
                )
            value = measure(record, metric) if record["status"] == "ok" else None
            cells[key] = {"label": record["label"], "status": record["status"], "bytes": value}
        default_rtol, default_atol = DEFAULT_TOLERANCE[metric]
        baseline = Baseline(
            device,
            metric,
            default_rtol if rtol is None else rtol,
            default_atol if atol_bytes is None else atol_bytes,
            cells,
            _origin(folders, group),
        )
        path = baseline_path(directory, device)
        baseline.write(path)
        written.append(path)
    return written


def check(folders: list[RunFolder], directory: Path, rtol: float | None, atol_bytes: int | None, out=None) -> int:
    """Print the verdict of every device class of the runs (to `out`, default stdout); 0 when nothing regressed."""
    out = out or sys.stdout
    records = _records(folders)
    failing = 0
    for device, group in by_device(records).items():
        path = baseline_path(directory, device)
        if not path.is_file():
            print(
                f"skipped: no baseline for device class {device!r} ({path} does not exist); "
                f"take one on purpose with: python -m bench check {_names(folders)} --update-baseline",
                file=out,
            )
            continue
        baseline = Baseline.read(path)
        r = baseline.rtol if rtol is None else rtol
        a = baseline.atol_bytes if atol_bytes is None else atol_bytes
        print(f"{_names(folders)} against {path}: {baseline.metric}, tolerance {r:.2%} + {a:,} B", file=out)
        _note_versions(baseline, group, out)
        findings = compare(baseline, group, r, a)
        for finding in findings:
            if finding.kind != "ok":
                print(finding.line(), file=out)
        counts: dict[str, int] = {}
        for finding in findings:
            counts[finding.kind] = counts.get(finding.kind, 0) + 1
        failing += sum(f.fails for f in findings)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        print(f"{'FAILED' if any(f.fails for f in findings) else 'passed'}: {summary}", file=out)
    return 1 if failing else 0


def _note_versions(baseline: Baseline, records: list[dict], out) -> None:
    """Say when the run used other package versions than the baseline: what autograd saves may differ."""
    env = records[0].get("env") or {}
    for key in ("torch_version", "transformers_version"):
        then, now = baseline.origin.get(key), env.get(key)
        if then and now and then != now:
            print(f"note: {key} is {now} here, {then} in the baseline", file=out)


def main(
    run_dirs: list[Path], directory: Path, rtol: float | None, atol_bytes: int | None, update_baseline: bool
) -> int:
    """`python -m bench check`: check (or, with update_baseline, rewrite) the cells of `run_dirs` against the
    baselines in `directory`. Without a run folder, first runs the embedded CI grid into runs/ci-memory."""
    if (rtol is not None and rtol < 0) or (atol_bytes is not None and atol_bytes < 0):
        raise BenchError("--rtol and --atol-bytes must be >= 0.")
    folders = [RunFolder(d) for d in run_dirs or [_run_ci_grid()]]
    for folder in folders:
        if not folder.cells_dir.is_dir():
            raise BenchError(f"{folder.root} is not a run folder (it has no cells/); pass a folder `bench run` wrote.")
    if update_baseline:
        for path in update(folders, directory, rtol, atol_bytes):
            print(f"wrote {path} from {_names(folders)}")
        return 0
    return check(folders, directory, rtol, atol_bytes)


def _run_ci_grid() -> Path:
    from . import matrix
    from .runner import Runner, RunOptions

    grid = matrix.load(CI_GRID)
    run_dir = Path("runs") / grid.name
    summary = Runner(grid, RunOptions(run_dir=run_dir, mode="force", argv=sys.argv)).run()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    print(f"ran {len(grid.cells)} cells of {grid.source} into {run_dir} ({counts})")
    return run_dir
