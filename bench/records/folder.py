"""A run folder: where the records of one run live, and how they are read back.

    grid.yaml               the grid as it was read
    run.json                the environment and the command line of the latest invocation
    cells/<hash>.json       one record per cell, written atomically (temp file + os.replace): a file that
                            exists is complete, whatever happened to the process that wrote it
    cells/<hash>.json.unreadable   a record file found cut short or edited by hand, set aside by `--resume`
    logs/<hash>.log         the cell process's stdout and stderr
    specs/<hash>.json       what the runner handed the cell's process
    profiles/<hash>/        torch.profiler traces (with --profile)
    results.parquet, results.csv   one row per cell (bench/records/table.py), rebuilt from cells/ at the end of
                            every run; a run in progress removes them first, so they are never stale
    .lock                   held by the `bench run` writing into the folder
    records.jsonl.gz        a slimmed, committed study: every record in one compressed file, in place of cells/,
                            logs/ and specs/ (`python -m bench.tools.slim_run`); read like cells/, never written to; a later pass's
                            cells/ beside it are read over it (a cell file wins for its hash)
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.fileio import UnreadableFile, read_json
from bench.records.record import Record, RecordError

TABLES = ("results.parquet", "results.csv")
ARCHIVE = "records.jsonl.gz"


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def cells_dir(self) -> Path:
        return self.root / "cells"

    def result_path(self, cell_hash: str) -> Path:
        return self.cells_dir / f"{cell_hash}.json"

    def log_path(self, cell_hash: str) -> Path:
        return self.root / "logs" / f"{cell_hash}.log"

    def spec_path(self, cell_hash: str) -> Path:
        return self.root / "specs" / f"{cell_hash}.json"

    def profile_dir(self, cell_hash: str) -> Path:
        return self.root / "profiles" / cell_hash

    def table_paths(self) -> tuple[Path, ...]:
        return tuple(self.root / name for name in TABLES)

    @property
    def archive(self) -> Path:
        return self.root / ARCHIVE

    def is_run_folder(self) -> bool:
        return self.cells_dir.is_dir() or self.archive.is_file()

    def scan(self) -> tuple[dict[str, Record], dict[Path, str]]:
        """(every readable record by hash, {path: why it cannot be read} for the others)."""
        records: dict[str, Record] = self._scan_archive() if self.archive.is_file() else {}
        unreadable: dict[Path, str] = {}
        if not self.cells_dir.is_dir():
            return records, unreadable
        for path in sorted(self.cells_dir.glob("*.json")):
            try:
                records[path.stem] = read_record(path)
            except BenchError as exc:
                unreadable[path] = str(exc)
        return records, unreadable

    def _scan_archive(self) -> dict[str, Record]:
        records = {}
        try:
            with gzip.open(self.archive, "rt", encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    record = Record.from_dict(json.loads(line))
                    records[record.cell_hash] = record
        except (OSError, EOFError, json.JSONDecodeError, RecordError) as exc:
            raise UnreadableFile(f"{self.archive} cannot be read ({str(exc)[:200]}); restore it from git.") from None
        return records

    def records(self, warn: bool = True) -> dict[str, Record]:
        """Every readable record, by hash; with `warn`, each unreadable file is named in one warning line on
        stderr (the stderr of the moment, not of import time)."""
        records, unreadable = self.scan()
        for reason in unreadable.values() if warn else ():
            print(f"warning: skipped {reason}", file=sys.stderr)
        return records

    def set_aside(self, path: Path) -> Path:
        """Move an unreadable record out of the way (kept, for a look) so that its cell counts as unfinished."""
        aside = path.with_name(path.name + ".unreadable")
        os.replace(path, aside)
        return aside

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder for one `bench run`: a second run into it is refused with one sentence."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BenchError(
                    f"run folder {self.root} is in use by another `bench run`; wait for it to finish, or give this "
                    "run its own folder with --name or --run-dir."
                ) from None
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def read_record(path: Path) -> Record:
    """The record in `path`; `BenchError` naming the file when it is not one."""
    data = read_json(path)
    try:
        return Record.from_dict(data)
    except RecordError as exc:
        raise UnreadableFile(f"{path} {exc}; remove it, or run again with --resume to set it aside.") from None
