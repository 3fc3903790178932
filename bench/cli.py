"""`python -m bench {run,report,check,compare,accuracy,env,list}`: the command line of the harness."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from bench.core.errors import BenchError
from bench.parent import launchers

DESCRIPTION = """\
Benchmark RandLoRA's variants against LoRA, full fine-tuning and peft on your own hardware.

A grid (YAML) expands into cells; each cell trains a model for a few steps in a fresh process and records
throughput, memory and its environment as one JSON file, then a parquet/CSV table of all cells.

  python -m bench run --matrix default          # the embedded CPU grid, a few minutes
  python -m bench run --matrix bench/grids/h200-anchors.yaml
  python -m bench list                          # presets, methods, precisions, tasks, grid fields
  python -m bench env                           # the hardware and software this machine offers
  python -m bench report runs/a runs/b -o report.html   # one offline HTML report of several runs
  python -m bench check [RUN_DIR ...]           # peak memory per cell against bench/baselines/
  python -m bench compare runs/a runs/b         # per cell: throughput, memory, accuracy changed beyond noise?
  python -m bench accuracy RUN_DIR              # accuracy tasks: mean ± std over seeds at the best lr
"""

SECTIONS = ("presets", "methods", "precisions", "tasks", "fields", "grids")

RUN_EPILOG = """\
statuses: ok, oom (out of memory: larger batch sizes of the same configuration are then skipped),
  error (an exception: reason and traceback in the cell's JSON), timeout (killed after timeout_s),
  diverged (NaN/inf loss), skipped (e.g. a peft method without peft installed).
fault injection: a grid may set `inject: oom | error | nan | hang` on a cell to exercise these paths; it is
  never active unless a grid asks for it.
grid format: name, defaults, axes (a product), include, exclude; fields: `python -m bench list fields`;
  the full reference and the result columns: bench/README.md.
results: <run dir>/cells/<hash>.json per cell, <run dir>/results.parquet and results.csv for all.
exit codes: 0 every cell finished (ok, oom, diverged or skipped), 1 some cell ended in error or timeout,
  2 bad input (grid, flags, run folder), 130 interrupted (finished cells are kept: rerun with --resume).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    metavar = "{run,report,check,compare,accuracy,env,list}"
    commands = parser.add_subparsers(dest="command", required=True, metavar=metavar)

    run = commands.add_parser(
        "run",
        help="run the cells of a grid",
        description="Run every cell of a grid, each in its own process.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--matrix",
        default="default",
        metavar="GRID",
        help="a YAML file, or the name of an embedded grid (default: %(default)s; see `list grids`)",
    )
    run.add_argument("--name", help="name of the run: results go to runs/NAME (default: the grid's name)")
    run.add_argument("--run-dir", type=Path, metavar="DIR", help="where results go (default: runs/<name>)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume",
        dest="mode",
        action="store_const",
        const="resume",
        help="keep every finished cell of the run folder, run the others",
    )
    mode.add_argument(
        "--rerun-failed",
        dest="mode",
        action="store_const",
        const="rerun-failed",
        help="keep ok / oom / diverged cells, run again those that ended in error, timeout or skipped",
    )
    mode.add_argument("--force", dest="mode", action="store_const", const="force", help="run every cell again")
    run.add_argument(
        "--only",
        nargs="+",
        metavar="SELECTOR",
        help="run only the cells whose label contains a SELECTOR or whose hash starts with one (the others are "
        "left as they are: add them later with --resume)",
    )
    run.add_argument("--dry-run", action="store_true", help="list the cells and exit (with --only: those it picks)")
    run.add_argument(
        "--profile",
        nargs="*",
        metavar="SELECTOR",
        help="write torch.profiler traces (TensorBoard and Chrome/Perfetto) of the cells whose label "
        "contains a SELECTOR or whose hash starts with one; no SELECTOR: every cell",
    )
    run.add_argument(
        "--measure-ceiling",
        action="store_true",
        help="also time a large matmul in each cell's precision and report MFU against it",
    )
    launchers.add_arguments(run)
    run.set_defaults(mode="new")

    env = commands.add_parser("env", help="print the detected hardware and software")
    env.add_argument("--json", action="store_true", help="as JSON")

    _add_report_and_check(commands)
    _add_compare(commands)
    accuracy = commands.add_parser(
        "accuracy",
        help="accuracy per task and method: mean ± std over seeds at the lr chosen on validation",
        description="Summarize the accuracy cells of a run (bench/views/accuracy.py) and write "
        "RUN_DIR/accuracy_summary.csv.",
    )
    accuracy.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder")
    lister = commands.add_parser("list", help="list presets, methods, precisions, tasks, grid fields, grids")
    lister.add_argument("what", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    return parser


REPORT_EPILOG = """\
RESULTS are run folders (or their results.parquet); cells from several machines and GPU types are merged.
The file opens offline with no request: plotly.js (its basic bundle, gzipped: ~0.5 MB), the charts' data, the
styles and the table sorter are inlined; a typical run's page weighs 0.6-1.3 MB.
"""

CHECK_EPILOG = """\
measure: max_memory_allocated on a GPU; on a CPU, parameters + gradients + optimizer state + tensors saved for
  backward, counted (the same on every run). Baselines: bench/baselines/<device class>.json, cells keyed by
  their memory-relevant fields. The gate fails closed: a device class without a baseline (unless
  --allow-missing), a baseline without cells, or a run sharing no cell with its baseline exits 1.
throughput (opt-in): --throughput --against RUN_DIR also compares each cell's tokens/s with the same cell of RUN_DIR;
  a slowdown counts beyond max(--throughput-threshold, either cell's (p90 - p10) / median step time).
exit codes: 0 no regression, 1 a cell regressed, ran out of memory or was not measured, 2 bad input.
"""


def _add_report_and_check(commands) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    report = commands.add_parser(
        "report",
        help="an HTML report of run folders",
        epilog=REPORT_EPILOG,
        formatter_class=raw,
        description="One self-contained HTML file comparing the configurations of one or several runs.",
    )
    report.add_argument("results", nargs="+", type=Path, metavar="RESULTS", help="run folders")
    report.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="default: %(default)s")
    report.add_argument("--title", default="RandLoRA benchmark report", help="the page's title")
    report.add_argument(
        "--plotly-js",
        type=Path,
        metavar="FILE",
        help="load plotly.js from FILE (its basic bundle written there if missing; the page refers to it by a "
        "relative path) instead of inlining it: pages that share one copy stay small. Default: inlined, gzipped, "
        "one self-contained file",
    )
    check = commands.add_parser(
        "check",
        help="gate: peak memory per cell against a committed baseline",
        epilog=CHECK_EPILOG,
        formatter_class=raw,
        description="Compare the memory of each cell of a run with the baseline of its device.",
    )
    check.add_argument(
        "run_dirs",
        nargs="*",
        type=Path,
        metavar="RUN_DIR",
        help="run folders, checked together (default: run the embedded ci-memory grid into runs/ci-memory first)",
    )
    check.add_argument(
        "--baselines",
        type=Path,
        metavar="DIR",
        help="where baselines live (default: bench/baselines/ inside the package, from any working directory)",
    )
    check.add_argument(
        "--allow-missing",
        action="store_true",
        help="a device class without a baseline is a message, not a failure (default: the gate fails closed)",
    )
    check.add_argument("--rtol", type=float, help="relative tolerance (default: the baseline's)")
    check.add_argument("--atol-bytes", type=int, help="absolute tolerance in bytes (default: the baseline's)")
    check.add_argument(
        "--throughput",
        action="store_true",
        help="also gate tokens/s per cell against the run given with --against, beyond each cell's step-time spread "
        "(bench compare's rule; memory stays the default gate)",
    )
    check.add_argument("--against", type=Path, metavar="RUN_DIR", help="the baseline run of --throughput")
    check.add_argument(
        "--throughput-threshold",
        type=float,
        default=0.05,
        metavar="REL",
        help="with --throughput: smallest relative slowdown that counts (default: %(default)s)",
    )
    check.add_argument(
        "--update-baseline",
        action="store_true",
        help="rewrite the baselines of the run's device classes from this run, on purpose",
    )


COMPARE_EPILOG = """\
cells are matched by their hash; cells on one side only are listed as new / missing and pass.
noise: a throughput change counts only beyond max(--threshold, (p90 - p10) / median of either side's step times);
  memory (peak_allocated_bytes on a GPU, counted bytes on a CPU) and accuracy count beyond --threshold.
exit codes: 0 no regression, 1 a cell regressed (or ran ok in BASE and failed in NEW), 2 bad input.
"""


def _add_compare(commands) -> None:
    from bench.views.compare import METRICS

    compare = commands.add_parser(
        "compare",
        help="per cell, what changed between a baseline run and new runs, beyond each cell's noise",
        epilog=COMPARE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare the cells of each NEW run folder with the same cells of BASE.",
    )
    compare.add_argument("base", type=Path, metavar="BASE", help="the baseline run folder")
    compare.add_argument("new", nargs="+", type=Path, metavar="NEW", help="run folders compared with BASE, each alone")
    compare.add_argument(
        "--threshold", type=float, default=0.05, help="smallest relative change that counts (default: %(default)s)"
    )
    compare.add_argument(
        "--metric",
        nargs="+",
        choices=METRICS,
        metavar="METRIC",
        help=f"what to compare, any of {', '.join(METRICS)} (default: all)",
    )


def _compare(args) -> int:
    from bench.views import compare

    return compare.main(args.base, args.new, args.threshold, args.metric)


def _report(args) -> int:
    from bench.views.report import build

    print(f"wrote {build(args.results, args.output, title=args.title, plotly_js=args.plotly_js)}")
    return 0


def _check(args) -> int:
    from bench.views import check

    if args.throughput != bool(args.against):
        raise BenchError("--throughput and --against RUN_DIR go together: --against names the run whose tokens/s "
                         "is the baseline.")
    run_dirs = args.run_dirs or [_run_ci_grid(check.CI_GRID)]
    code = check.main(run_dirs, args.baselines, args.rtol, args.atol_bytes, args.update_baseline, args.allow_missing)
    if args.throughput and not args.update_baseline:
        code = max(code, check.throughput(run_dirs, args.against, args.throughput_threshold))
    return code


def _run_ci_grid(name: str) -> Path:
    """`bench check` without a run folder: run the embedded CI grid into runs/<its name> first."""
    from bench.parent.runner import Runner, RunOptions
    from bench.spec import grid as grids

    grid = grids.load(name)
    run_dir = Path("runs") / grid.name
    summary = Runner(grid, RunOptions(run_dir=run_dir, mode="force", argv=sys.argv)).run()
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    print(f"ran {len(grid.cells)} cells of {grid.source} into {run_dir} ({counts})")
    return run_dir


def _accuracy(args) -> int:
    from bench.views import accuracy

    return accuracy.main(args.run_dir)


def _run(args) -> int:
    from bench.parent.runner import Runner, RunOptions
    from bench.spec import grid as grids

    if args.name is not None and not grids.is_run_name(args.name):
        raise BenchError(
            f"--name {args.name!r} is not a run name; use letters, digits, '.', '_', '-' (not '.' or '..'), "
            "or give the folder itself with --run-dir."
        )
    grid = grids.load(args.matrix)
    name = args.name or grid.name
    if args.run_dir is None and not grids.is_run_name(name):
        raise BenchError(
            f"the run name {name!r} (from {grid.source}) is not one path component of letters, digits, '.', '_', "
            "'-'; pass --name NAME or --run-dir DIR."
        )
    run_dir = args.run_dir or Path("runs") / name
    if grid.duplicates:
        print(f"note: {grid.duplicates} duplicate cells merged (combinations of {grid.source} that resolve to one cell)")
    if args.dry_run:
        return _dry_run(grid, run_dir, args.only)
    options = RunOptions(
        run_dir=run_dir,
        mode=args.mode,
        profile=tuple(args.profile) if args.profile is not None else None,
        only=tuple(args.only) if args.only else None,
        measure_ceiling=args.measure_ceiling,
        argv=sys.argv,
        launcher=launchers.from_arguments(args, grid.slurm),
    )
    runner = Runner(grid, options)
    try:
        summary = runner.run()
    except KeyboardInterrupt:
        print(f"interrupted; finished cells are kept in {run_dir}: continue with --resume", file=sys.stderr)
        return 130
    _cell_table(grid, run_dir, args.only)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts.items())) or "nothing to run"
    kept = f"; {summary.kept} finished cells kept" if summary.kept else ""
    print(f"{counts}{kept}. Results: {summary.table or run_dir}")
    return summary.exit_code


def _cell_table(grid, run_dir: Path, only: list[str] | None) -> None:
    """The grid's cells (those --only picks) as they stand in the run folder: status, tokens/s and peak memory."""
    from bench.parent.runner import selects
    from bench.records.folder import RunFolder
    from bench.views.compare import value

    done = RunFolder(run_dir).records(warn=None)
    rows = [("status", "tokens/s", "peak memory", "cell")]
    for cell in grid.cells:
        if only and not selects(cell, tuple(only)):
            continue
        record = done.get(cell.hash)
        if record is None:
            rows.append(("-", "-", "-", cell.label()))
            continue
        tokens, memory = value(record, "tokens_per_s"), value(record, "memory")
        rows.append(
            (
                record.status,
                f"{tokens:,.0f}" if tokens is not None else "-",
                f"{memory / 2**30:.2f} GiB" if memory is not None else "-",
                record.label,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for status, tokens, memory, label in rows:
        print(f"{status:<{widths[0]}}  {tokens:>{widths[1]}}  {memory:>{widths[2]}}  {label}")


def _estimate(done: dict, to_run: int) -> str:
    """'; ~N cells × M s (median wall time of the K finished cells here) ≈ T' from this folder's records, or ''."""
    import statistics

    walls = [r.run.get("wall_s") for r in done.values() if isinstance(r.run.get("wall_s"), (int, float))]
    if not walls or not to_run:
        return ""
    each = statistics.median(walls)
    total = each * to_run
    said = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.0f} min" if total >= 60 else f"{total:.0f} s"
    return f"; ~{to_run} cells × {each:.0f} s (median wall time of the {len(walls)} finished here) ≈ {said}"


def _dry_run(grid, run_dir: Path, only: list[str] | None) -> int:
    from bench.parent.runner import check_selectors, selects
    from bench.records.folder import RunFolder

    done = RunFolder(run_dir).records()
    if only:
        check_selectors(grid.cells, tuple(only), "--only")
    print(f"dry run: the cells of {grid.source} into {run_dir} (hash, status there, label); nothing runs")
    for cell in grid.cells:
        if only and not selects(cell, tuple(only)):
            continue
        status = done[cell.hash].status if cell.hash in done else "-"
        print(f"{cell.hash}  {status:<8}  {cell.label()}")
    finished = sum(c.hash in done for c in grid.cells)
    picked = [c for c in grid.cells if not only or selects(c, tuple(only))]
    estimate = _estimate(done, sum(c.hash not in done for c in picked))
    print(f"{len(grid.cells)} cells from {grid.source}; run folder {run_dir} ({finished} finished){estimate}")
    return 0


def _env(args) -> int:
    from bench.core import envinfo
    from bench.worker import metrics

    env = envinfo.capture()
    if args.json:
        print(json.dumps(env, indent=1))
        return 0
    for key, value in env.items():
        if key.endswith("_bytes") and isinstance(value, int):
            print(f"{key.removesuffix('_bytes'):<22} {value / 2**30:.1f} GiB")
        elif key != "gpus":
            print(f"{key:<22} {value}")
    for i, gpu in enumerate(env["gpus"]):
        peak = metrics.peak_flops(gpu["gpu_name"], "bf16")
        known = f"{peak / 1e12:.0f} TFLOP/s bf16 (datasheet)" if peak else "not in the peak table: MFU will be null"
        print(f"gpu {i:<18} {gpu['gpu_name']}, {gpu['gpu_memory_bytes'] / 2**30:.1f} GiB, {known}")
        print(
            f"{'':<22} {gpu['gpu_uuid']}, driver {gpu['driver_version']} (CUDA {gpu['cuda_driver_version']}), "
            f"power limit {gpu['power_limit_w']} W, SM clock {gpu['sm_clock_mhz']}/{gpu['sm_clock_max_mhz']} MHz"
        )
    if not env["gpus"]:
        print("gpus                   none found through NVML: cells run on the CPU")
    return 0


def _list(args) -> int:
    from bench.spec import cells, grid, methods, presets, tasks
    from bench.spec.precision import PRECISIONS

    unknown = sorted(set(args.what) - set(SECTIONS))
    if unknown:
        raise BenchError(f"list section {unknown[0]!r} is unknown; allowed values are {', '.join(SECTIONS)}.")
    wanted = set(args.what) or set(SECTIONS)
    if "presets" in wanted:
        print("presets (or hf:<path or hub id>, loaded with from_pretrained):")
        for p in presets.PRESETS.values():
            print(f"  {p.name:<12} {presets.parameter_count(p) / 1e6:>9,.1f}M  {p.description}")
    if "methods" in wanted:
        print("methods (grid: `method: name` or `method: {name: ..., <param>: ...}`; defaults shown):")
        for m in methods.METHODS.values():
            missing = m.unavailable_reason()
            params = ", ".join(f"{k}={v}" for k, v in m.resolve({}).items())
            print(
                f"  {m.name:<14} {m.description}{'  [unavailable: ' + missing + ']' if missing else ''}\n"
                f"  {'':<14} {params}"
            )
    if "precisions" in wanted:
        print("precisions:")
        for p in PRECISIONS.values():
            print(f"  {p.name:<10} {p.description}")
    if "tasks" in wanted:
        print("tasks:")
        for t in tasks.TASKS.values():
            print(f"  {t.name:<12} {t.description}")
    if "fields" in wanted:
        print("cell fields (grid keys under defaults / axes / include / exclude):")
        for name, f in cells.FIELDS.items():
            print(f"  {name:<18} default {f.default!r:<14} {f.doc}")
    if "grids" in wanted:
        print(f"embedded grids (--matrix NAME): {', '.join(grid.embedded_grids())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        commands = {
            "run": _run,
            "report": _report,
            "check": _check,
            "compare": _compare,
            "env": _env,
            "list": _list,
            "accuracy": _accuracy,
        }
        return commands[args.command](args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # a path that is a file where a folder belongs, a read-only folder, a full disk
        print(f"error: {_os_sentence(exc)}", file=sys.stderr)
        return 2


def _os_sentence(exc: OSError) -> str:
    """One sentence for a file-system error: what could not be done, where, and what would help. The writes are
    atomic (a temporary file renamed into place), so nothing half-written is left behind."""
    where = f" {exc.filename}" if exc.filename else ""
    hints = {
        errno.ENOSPC: "free some space or write elsewhere (--run-dir / -o)",
        errno.EDQUOT: "free some space or write elsewhere (--run-dir / -o)",
        errno.EACCES: "make it writable or write elsewhere (--run-dir / -o)",
        errno.EROFS: "write elsewhere (--run-dir / -o)",
        errno.ENOTDIR: "a file stands where a folder belongs; give a folder path (--run-dir / -o)",
        errno.EEXIST: "a file stands where a folder belongs; give a folder path (--run-dir / -o)",
        errno.EISDIR: "a folder stands where a file belongs; give a file path",
    }
    hint = hints.get(exc.errno, "check the path and try again")
    return f"cannot use{where}: {exc.strerror or exc}; {hint}; nothing was left half-written."
