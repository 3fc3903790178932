"""Slim a finished run folder for committing: every cell record into one compressed file, logs and specs dropped.

    python -m bench.tools.slim_run reports/perf-h200/run [more run folders]

Writes RUN_DIR/records.jsonl.gz (one record a line, keys sorted, so a re-slim of the same records gives the same
bytes), rebuilds results.parquet from it, then removes cells/, logs/ and specs/. Step times are kept to 0.1 µs
(`STEP_TIME_DIGITS`), below the resolution of the CUDA events that measured them (about 0.5 µs); every other
value is kept as it was. A slimmed folder may be slimmed again (from its archive). `bench report`, `bench check` and
`bench accuracy` read the archive as they read cells/, and `bench run` extends a slimmed study: its cells count as
finished, new cells land in cells/ beside the archive (a cell file wins over the archive's record of the same hash),
and slimming again folds them in. Profiles and READMEs stay.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.fileio import replace_atomically
from bench.records import table
from bench.records.folder import RunFolder


STEP_TIME_DIGITS = 7  # decimals of a second


def slim(root: Path) -> tuple[int, int]:
    """(records archived, bytes of the archive)."""
    folder = RunFolder(root)
    if not folder.is_run_folder():
        raise BenchError(f"{root} is not a run folder (no cells/ or {folder.archive.name}); give a folder `bench run` wrote.")
    records, unreadable = folder.scan()
    if unreadable:
        raise BenchError(f"{next(iter(unreadable))} cannot be read; fix or remove it before slimming {root}.")
    ordered = sorted(records.values(), key=lambda r: (r.started_at, r.label))
    for record in ordered:
        if record.train.get("step_times_s"):
            record.train["step_times_s"] = [round(t, STEP_TIME_DIGITS) for t in record.train["step_times_s"]]

    def write(tmp: str) -> None:
        with gzip.GzipFile(tmp, "wb", compresslevel=9, mtime=0) as out:
            for record in ordered:
                out.write((json.dumps(record.to_dict(), sort_keys=True, default=str) + "\n").encode("utf-8"))

    replace_atomically(folder.archive, write)
    for name in ("cells", "logs", "specs"):
        shutil.rmtree(root / name, ignore_errors=True)
    table.write_table(folder)
    (root / "results.csv").unlink(missing_ok=True)  # the parquet holds the same table
    return len(ordered), folder.archive.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.slim_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    args = parser.parse_args(argv)
    try:
        for root in args.run_dirs:
            count, size = slim(root)
            print(f"{root}: {count} records in {RunFolder(root).archive.name} ({size / 1e3:.0f} KB)")
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
