"""`python -m bench compare BASE NEW [NEW ...]`: what changed per cell between two runs, beyond their own noise.

    key         the cell hash: a cell of NEW is compared with the cell of BASE that has the same hash; cells found
                on one side only are listed as new / missing and never fail the comparison
    metrics     tokens_per_s (higher is better), memory (lower is better: peak_allocated_bytes on a GPU,
                records.counted_bytes on a CPU) and accuracy (higher is better: test_accuracy, else accuracy)
    noise       a cell's relative step-time spread, (p90 − p10) / median of its measured steps; a throughput change
                counts only beyond max(threshold, the spread of either side), so a noisy cell needs a larger change.
                Memory and accuracy have no per-cell spread in a record: they count beyond the threshold
    verdict     per cell: regression (a metric worse beyond its bound, or ok in BASE and not ok in NEW), improvement,
                same (within the bound), new, missing; exit 1 on any regression, else 0; 2 on bad input
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.errors import BenchError
from bench.records.folder import RunFolder
from bench.records.record import Record, counted_bytes, device_class

METRICS = ("tokens_per_s", "memory", "accuracy")
HIGHER_IS_BETTER = {"tokens_per_s": True, "memory": False, "accuracy": True}
ACCURACY_KEYS = ("test_accuracy", "accuracy")  # the first a record has is its accuracy
FAILED = ("error", "timeout", "diverged", "oom")  # ok in BASE, one of these in NEW: a regression


def _percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), q in [0, 1]."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(record: Record) -> float | None:
    """(p90 − p10) / median of the record's measured step times; None when it has none."""
    train = record.train
    p10, p90, median = (train.get(k) for k in ("step_time_p10_s", "step_time_p90_s", "step_time_median_s"))
    times = [t for t in train.get("step_times_s") or [] if isinstance(t, (int, float))]
    if None in (p10, p90, median) and times:
        p10, p90, median = _percentile(times, 0.1), _percentile(times, 0.9), statistics.median(times)
    if None in (p10, p90, median) or not median:
        return None
    return (p90 - p10) / median


def value(record: Record, metric: str) -> float | None:
    """The record's number for `metric` (one of METRICS); None when it did not measure it."""
    if metric == "tokens_per_s":
        return record.train.get("tokens_per_s")
    if metric == "memory":
        if device_class(record) == "cpu":
            return counted_bytes(record.memory)
        return record.memory.get("peak_allocated_bytes")
    for key in ACCURACY_KEYS:
        if record.task_metrics.get(key) is not None:
            return record.task_metrics[key]
    return None


@dataclass
class Change:
    metric: str
    base: float
    new: float
    bound: float  # the relative change that counts

    @property
    def relative(self) -> float:
        return (self.new - self.base) / self.base if self.base else math.inf * (self.new - self.base)

    @property
    def worse(self) -> bool:
        return -self.relative > self.bound if HIGHER_IS_BETTER[self.metric] else self.relative > self.bound

    @property
    def better(self) -> bool:
        return self.relative > self.bound if HIGHER_IS_BETTER[self.metric] else -self.relative > self.bound


@dataclass
class CellComparison:
    key: str
    label: str
    verdict: str  # regression | improvement | same | new | missing | not measured
    changes: dict[str, Change] = field(default_factory=dict)
    note: str = ""


def compare_records(
    base: dict[str, Record], new: dict[str, Record], threshold: float, metrics: tuple[str, ...] = METRICS
) -> list[CellComparison]:
    """One comparison per cell key of either side, shared cells first (by label), then new, then missing."""
    shared = sorted(base.keys() & new.keys(), key=lambda k: new[k].label)
    rows = [_compare_cell(base[k], new[k], threshold, metrics) for k in shared]
    only_new = sorted(new.keys() - base.keys(), key=lambda k: new[k].label)
    only_base = sorted(base.keys() - new.keys(), key=lambda k: base[k].label)
    rows += [CellComparison(k, new[k].label, "new") for k in only_new]
    rows += [CellComparison(k, base[k].label, "missing") for k in only_base]
    return rows


def _compare_cell(base: Record, new: Record, threshold: float, metrics: tuple[str, ...]) -> CellComparison:
    row = CellComparison(new.cell_hash, new.label, "same")
    if base.status == "ok" and new.status in FAILED:
        row.verdict, row.note = "regression", f"ok → {new.status}"
        return row
    if base.status != "ok" or new.status != "ok":
        improved = new.status == "ok" and base.status in FAILED
        row.verdict = "improvement" if improved else "same" if base.status == new.status else "not measured"
        row.note = f"{base.status} → {new.status}"
        return row
    noise = max([threshold] + [s for s in (spread(base), spread(new)) if s is not None])
    for metric in metrics:
        a, b = value(base, metric), value(new, metric)
        if a is None or b is None:
            continue
        row.changes[metric] = Change(metric, float(a), float(b), noise if metric == "tokens_per_s" else threshold)
    if any(c.worse for c in row.changes.values()):
        row.verdict = "regression"
    elif any(c.better for c in row.changes.values()):
        row.verdict = "improvement"
    return row


def _fmt_change(change: Change | None, metric: str) -> str:
    if change is None:
        return "-"
    if metric == "memory":
        text = f"{change.new / 2**30:.2f} GiB"
    elif metric == "accuracy":
        text = f"{change.new:.4f}"
    else:
        text = f"{change.new:,.0f}"
    return f"{text} {change.relative:+.1%}"


def render(rows: list[CellComparison], metrics: tuple[str, ...]) -> list[str]:
    """An aligned table: cell, label, each metric's new value and relative change, the noise bound, the verdict."""
    header = ["cell", "label", *metrics, "bound", "verdict"]
    lines = []
    for row in rows:
        bound = row.changes["tokens_per_s"].bound if "tokens_per_s" in row.changes else None
        label = row.label if len(row.label) <= 60 else row.label[:59] + "…"
        lines.append(
            [
                row.key[:12],
                label,
                *(_fmt_change(row.changes.get(m), m) for m in metrics),
                f"±{bound:.1%}" if bound is not None else "-",
                row.verdict + (f" ({row.note})" if row.note else ""),
            ]
        )
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *lines]]


def summary(rows: list[CellComparison]) -> str:
    counts = {v: sum(r.verdict == v for r in rows) for v in ("regression", "improvement", "same", "new", "missing")}
    counts["not measured"] = sum(r.verdict == "not measured" for r in rows)
    return ", ".join(f"{n} {v}" for v, n in counts.items() if n) or "no cells"


def load(path: Path) -> dict[str, Record]:
    folder = RunFolder(path.parent if path.is_file() else path)
    if not folder.is_run_folder():
        raise BenchError(f"{path} is not a run folder (no cells/ nor {folder.archive.name}); pass one bench run wrote.")
    return folder.records()


def compare_runs(
    base_dir: Path, new_dir: Path, threshold: float, metrics: tuple[str, ...] = METRICS
) -> list[CellComparison]:
    """The comparison of two run folders; `BenchError` when either is not one or they share no cell."""
    base, new = load(base_dir), load(new_dir)
    if not base.keys() & new.keys():
        raise BenchError(
            f"{new_dir} shares no cell with {base_dir} ({len(new)} and {len(base)} cells); compare runs of one grid."
        )
    return compare_records(base, new, threshold, metrics)


def main(base_dir: Path, new_dirs: list[Path], threshold: float, metrics: tuple[str, ...] | None, out=None) -> int:
    """Print each NEW's table and summary line; 1 on any regression, else 0."""
    out = out or sys.stdout
    if not 0 <= threshold < 1:
        raise BenchError(f"--threshold {threshold} is out of range; give a relative change in [0, 1), e.g. 0.05.")
    metrics = tuple(metrics or METRICS)
    regressed = False
    for new_dir in new_dirs:
        rows = compare_runs(base_dir, new_dir, threshold, metrics)
        bound = f"threshold {threshold:.0%}, or a cell's step-time spread if larger"
        print(f"{new_dir} against {base_dir} ({bound}):", file=out)
        for line in render(rows, metrics):
            print(f"  {line}", file=out)
        found = [r for r in rows if r.verdict == "regression"]
        regressed |= bool(found)
        print(f"{'REGRESSION' if found else 'ok'}: {summary(rows)}", file=out)
    return 1 if regressed else 0
