"""The entry point of a cell's process: `python -m bench._child <spec.json>`.

Protocol with the runner: the spec holds the cell, the options and the record skeleton; this process fills in
the record and writes it atomically to spec["result_path"], then exits 0. No result file means the process died
(killed on timeout, crashed, killed by the kernel's OOM killer), and the runner records that instead.
If the runner itself dies, this process notices it has been orphaned and exits without a result, so that
`--resume` runs the cell again instead of finding a half-finished one.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ORPHAN_CHECK_S = 1.0


def _exit_when_orphaned(parent_pid: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(ORPHAN_CHECK_S)
            if os.getppid() != parent_pid:
                os._exit(3)

    threading.Thread(target=watch, name="orphan-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    _exit_when_orphaned(os.getppid())
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    from . import cell, results  # torch and friends load here, after the watchdog is up
    from .cells import Cell

    record = spec["record"]
    record.update(cell.run(Cell.from_dict(spec["cell"]), cell.Options(**spec["options"])))
    record["run"]["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    record["run"]["wall_s"] = time.time() - spec["spawned_at"]
    results.write_json(Path(spec["result_path"]), record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
