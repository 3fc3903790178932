"""The device kernels of profiled cells, side by side: milliseconds per profiled step, by kernel family.

    python -m bench.tools.kernel_table RUN_DIR [--cells HASH ...] [--top 25]

Reads RUN_DIR/profiles/<hash>/trace.json (written by `bench run --profile`), sums the duration of every event on
the device (kernels, copies, memsets) by family (the kernel's name with template arguments and launch-specific
suffixes dropped) and prints one table: a row per family, a column per cell, ms per profiled step, the families
with the most time in any cell first, then the total. Where two configurations differ in step time, the rows that
differ say which kernels account for it (a GEMM family, an elementwise fusion, the optimizer, copies).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from bench.worker.profiling import ACTIVE_STEPS, DEVICE_WORK

_TEMPLATE = re.compile(r"<.*")  # C++ template arguments
_TRITON_SUFFIX = re.compile(r"_\d+$")  # triton_poi_fused_add_mul_3 -> triton_poi_fused_add_mul


def family(name: str) -> str:
    """A kernel's name without template arguments, 'void ' and the numbered suffix of a Triton kernel."""
    name = _TEMPLATE.sub("", name.removeprefix("void ")).strip()
    return _TRITON_SUFFIX.sub("", name)[:90]


def kernel_ms(trace_path: Path) -> dict[str, float]:
    """Family -> milliseconds per profiled step in one Chrome trace."""
    events = json.loads(trace_path.read_text(encoding="utf-8")).get("traceEvents", [])
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("ph") == "X" and event.get("cat") in DEVICE_WORK:
            totals[family(event.get("name", "?"))] += float(event.get("dur", 0.0)) / 1e3 / ACTIVE_STEPS
    return dict(totals)


def table(columns: dict[str, dict[str, float]], top: int) -> str:
    names = list(columns)
    families = sorted({f for col in columns.values() for f in col}, key=lambda f: -max(c.get(f, 0.0) for c in columns.values()))
    width = max(12, *(len(n) for n in names))
    lines = ["ms per profiled step".ljust(92) + "".join(n.rjust(width + 2) for n in names)]
    for f in families[:top]:
        lines.append(f.ljust(92) + "".join(f"{columns[n].get(f, 0.0):{width + 2}.2f}" for n in names))
    rest = families[top:]
    if rest:
        lines.append(f"({len(rest)} more families)".ljust(92) + "".join(
            f"{sum(columns[n].get(f, 0.0) for f in rest):{width + 2}.2f}" for n in names))
    lines.append("total".ljust(92) + "".join(f"{sum(columns[n].values()):{width + 2}.2f}" for n in names))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.kernel_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run folder whose cells were profiled (bench run --profile)")
    parser.add_argument("--cells", nargs="*", default=None, help="cell hashes (prefixes) to show (default: every profiled cell)")
    parser.add_argument("--top", type=int, default=25, help="families to list before the rest are summed (default 25)")
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top is {args.top}; it must be at least 1.")
    if not args.run_dir.is_dir():
        print(f"no run folder at {args.run_dir}; pass the folder `bench run --run-dir` wrote.", file=sys.stderr)
        return 2
    traces = sorted((args.run_dir / "profiles").glob("*/trace.json"))
    if args.cells:
        traces = [t for t in traces if any(t.parent.name.startswith(c) for c in args.cells)]
    if not traces:
        print(f"no profile trace under {args.run_dir / 'profiles'}; run the cells with `bench run --profile` first.",
              file=sys.stderr)
        return 2
    print(table({t.parent.name[:12]: kernel_ms(t) for t in traces}, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
