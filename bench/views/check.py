"""`python -m bench check`: the memory of a run's cells against a committed baseline, a gate for CI.

    measure     on a GPU, torch's max_memory_allocated over the measured steps (`peak_allocated_bytes`); on a CPU,
                where no allocator keeps peaks, `counted_bytes`: parameters + gradients + optimizer state + the
                tensors saved for backward, counted from the tensors themselves, so the same code gives the
                same number on every run and every machine
    baseline    bench/baselines/<device class>.json (inside the package, found from any working directory; --baselines
                names another folder), one per device class ("cpu", or the GPU's NVML name such as
                "NVIDIA H200"), cells keyed by `memory_key`: the cell's identity without the fields that cannot
                change its memory (steps, lr, ...), so a longer run of the same configuration still matches
    verdict     a cell regresses when its measure exceeds baseline + atol_bytes + rtol × baseline, or when it ran
                out of memory where the baseline fits; one line per cell that needs a look, exit 1 on any
                regression or unmeasured cell; cells new to or missing from the run are listed but pass.
                The gate fails closed: a device class without a baseline, a baseline without cells, or a run
                that shares no cell with its baseline measured nothing, and exits 1 (`--allow-missing` turns a
                device class without a baseline into a message, for a machine no baseline was taken on)

throughput  opt-in (`--throughput --against RUN_DIR`): tokens/s per cell against another run, beyond the cells' own
                step-time spread, by bench/views/compare.py's rule; memory stays the default gate

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

from bench.core.errors import BenchError
from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import Record, counted_bytes, device_class
from bench.spec.cells import NOT_HASHED, Cell, stable_hash

BASELINE_VERSION = 1
CI_GRID = "ci-memory"  # what `bench check` runs when given no run folder
BASELINES = Path(__file__).resolve().parents[1] / "baselines"  # bench/baselines/, shipped with the package
# Fields of a cell that change how long or how it is timed, never which tensors exist at once.
NOT_MEMORY = (*NOT_HASHED, "steps", "warmup_steps", "lr", "head_lr", "device")
GPU_METRIC, CPU_METRIC = "peak_allocated_bytes", "counted_bytes"
# (rtol, atol_bytes) a new baseline gets: the CPU measure is exact, so only a real change moves it; a GPU
# allocator's peak moves by a few blocks and workspaces between driver and library versions.
DEFAULT_TOLERANCE = {CPU_METRIC: (0.01, 0), GPU_METRIC: (0.01, 16 * 2**20)}
FAILED = ("error", "timeout", "diverged")  # statuses that measured nothing and say nothing about memory


def memory_key(cell: dict) -> str:
    """A stable hash of the cell's fields that decide its memory: `Cell.identity()` without NOT_MEMORY."""
    identity = Cell.from_dict(cell).identity()
    return stable_hash({k: v for k, v in identity.items() if k not in NOT_MEMORY})


def metric_for(device: str) -> str:
    return CPU_METRIC if device == "cpu" else GPU_METRIC


def measure(record: Record, metric: str) -> int | None:
    return counted_bytes(record.memory) if metric == CPU_METRIC else record.memory.get(metric)


def baseline_path(directory: Path, device: str) -> Path:
    """bench/baselines/cpu.json, bench/baselines/nvidia-h200.json, ..."""
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
        """The baseline in `path`, every field checked: a bad one is one sentence naming the file and the field."""
        data = read_json(path)
        if data.get("version") != BASELINE_VERSION:
            raise BenchError(
                f"{path} has baseline version {data.get('version')!r}; this harness reads {BASELINE_VERSION}."
            )

        def bad(field_name: str, what: str) -> BenchError:
            return BenchError(f"{path}: {field_name} is {data.get(field_name)!r}; it must be {what}.")

        if data.get("metric") not in (CPU_METRIC, GPU_METRIC):
            raise bad("metric", f"{CPU_METRIC!r} or {GPU_METRIC!r}")
        if not _number(data.get("rtol")) or data["rtol"] < 0:
            raise bad("rtol", "a number >= 0")
        if not isinstance(data.get("atol_bytes"), int) or isinstance(data["atol_bytes"], bool) or data["atol_bytes"] < 0:
            raise bad("atol_bytes", "a whole number of bytes >= 0")
        if not isinstance(data.get("device_class"), str):
            raise bad("device_class", "a string")
        cells = data.get("cells")
        if not isinstance(cells, dict):
            raise bad("cells", "a mapping of memory keys to {label, status, bytes}")
        for key, cell in cells.items():
            ok = isinstance(cell, dict) and isinstance(cell.get("label"), str) and isinstance(cell.get("status"), str)
            value = cell.get("bytes") if isinstance(cell, dict) else None
            if not ok or not (value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)):
                raise BenchError(
                    f"{path}: cell {key!r} is {cell!r}; it must be {{label: str, status: str, bytes: int >= 0 or null}}."
                )
        origin = data.get("origin") if isinstance(data.get("origin"), dict) else {}
        return cls(data["device_class"], data["metric"], float(data["rtol"]), data["atol_bytes"], cells, origin)

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


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def compare(baseline: Baseline, records: list[Record], rtol: float, atol_bytes: int) -> list[Finding]:
    """A finding per cell of the run, in run order, then one per baseline cell the run lacks."""
    findings, seen = [], set()
    for record in records:
        key = memory_key(record.cell)
        seen.add(key)
        findings.append(_finding(record, baseline.cells.get(key), baseline.metric, rtol, atol_bytes))
    findings += [
        Finding("missing", b["label"], "in the baseline, not in this run")
        for k, b in baseline.cells.items()
        if k not in seen
    ]
    return findings


def _finding(record: Record, base: dict | None, metric: str, rtol: float, atol_bytes: int) -> Finding:
    label, status, reason = record.label, record.status, record.reason or ""
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


def _origin(folders: list[RunFolder], records: list[Record]) -> dict:
    env = records[0].env
    keys = ("git_commit", "git_dirty", "torch_version", "transformers_version", "peft_version", "hostname")
    return {
        "runs": [str(f.root) for f in folders],
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **{k: env.get(k) for k in keys},
    }


def by_device(records: list[Record]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for record in sorted(records, key=lambda r: (r.started_at, r.label)):
        grouped.setdefault(device_class(record), []).append(record)
    return grouped


def _records(folders: list[RunFolder]) -> list[Record]:
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
    failed = [r.label for r in records if r.status in FAILED]
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
            key = memory_key(record.cell)
            if key in cells:
                raise BenchError(
                    f"cells {cells[key]['label']!r} and {record.label!r} of {_names(folders)} differ only in fields "
                    f"that do not change memory ({', '.join(NOT_MEMORY)}); keep one of them in the baseline's grid."
                )
            value = measure(record, metric) if record.status == "ok" else None
            cells[key] = {"label": record.label, "status": record.status, "bytes": value}
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


def check(
    folders: list[RunFolder],
    directory: Path,
    rtol: float | None,
    atol_bytes: int | None,
    out=None,
    allow_missing: bool = False,
) -> int:
    """Print the verdict of every device class of the runs (to `out`, default stdout); 0 when nothing regressed
    and something was measured against a baseline (the gate fails closed)."""
    out = out or sys.stdout
    records = _records(folders)
    failing = 0
    for device, group in by_device(records).items():
        path = baseline_path(directory, device)
        if not path.is_file():
            print(
                f"{'skipped' if allow_missing else 'FAILED'}: no baseline for device class {device!r} ({path} does "
                f"not exist); take one on purpose with: python -m bench check {_names(folders)} --update-baseline",
                file=out,
            )
            failing += not allow_missing
            continue
        baseline = Baseline.read(path)
        if not baseline.cells:
            print(f"FAILED: {path} holds no cells: nothing can be checked against it; take a new baseline.", file=out)
            failing += 1
            continue
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
        compared = sum(f.kind not in ("new", "missing") for f in findings)
        failing += sum(f.fails for f in findings) + (compared == 0)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
        if compared == 0:
            print(f"FAILED: the run shares no cell with {path} ({summary}); nothing was checked.", file=out)
        else:
            print(f"{'FAILED' if any(f.fails for f in findings) else 'passed'}: {summary}", file=out)
    return 1 if failing else 0


def _note_versions(baseline: Baseline, records: list[Record], out) -> None:
    """Say when the run used other package versions than the baseline: what autograd saves may differ."""
    env = records[0].env
    for key in ("torch_version", "transformers_version"):
        then, now = baseline.origin.get(key), env.get(key)
        if then and now and then != now:
            print(f"note: {key} is {now} here, {then} in the baseline", file=out)


def main(
    run_dirs: list[Path],
    directory: Path | None,
    rtol: float | None,
    atol_bytes: int | None,
    update_baseline: bool,
    allow_missing: bool = False,
) -> int:
    """`python -m bench check RUN_DIR...`: check (or, with update_baseline, rewrite) the cells of `run_dirs`
    against the baselines in `directory` (default: the package's bench/baselines/)."""
    directory = BASELINES if directory is None else directory
    if (rtol is not None and rtol < 0) or (atol_bytes is not None and atol_bytes < 0):
        raise BenchError("--rtol and --atol-bytes must be >= 0.")
    folders = [RunFolder(d) for d in run_dirs]
    for folder in folders:
        if not folder.is_run_folder():
            raise BenchError(f"{folder.root} is not a run folder (it has no cells/); pass a folder `bench run` wrote.")
    if update_baseline:
        for path in update(folders, directory, rtol, atol_bytes):
            print(f"wrote {path} from {_names(folders)}")
        return 0
    if not directory.is_dir():
        raise BenchError(f"the baselines folder {directory} does not exist; give --baselines DIR, or take a baseline "
                         "with --update-baseline.")
    return check(folders, directory, rtol, atol_bytes, allow_missing=allow_missing)


def throughput(run_dirs: list[Path], against: Path, threshold: float, out=None) -> int:
    """`check --throughput --against RUN_DIR`: each run's tokens/s per cell against the run `against`, a change
    counted only beyond max(threshold, either cell's step-time spread) (bench/views/compare.py); 1 on a regression."""
    from bench.views import compare

    return compare.main(against, run_dirs, threshold, ("tokens_per_s",), out=out)
