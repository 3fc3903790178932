"""Files written atomically, read with a sentence that names them when they are not what they should be."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from bench.core.errors import BenchError


class UnreadableFile(BenchError):
    """A file the harness wrote that is missing, cut short or edited by hand; the message names it."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_atomically(path: Path, write) -> None:
    """Call `write(tmp_path)`, then rename it onto `path`: `path` is either the old file or the whole new one,
    never a partial write. The temporary file is removed on any failure (a full disk included), and the new
    file gets the mode a plain `open` would give it (0666 less the umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    """Write `data` (a mapping, or an object with `to_dict()`, such as a record) as JSON, atomically (see
    `replace_atomically`), flushed to disk before the rename."""
    data = data.to_dict() if hasattr(data, "to_dict") else data

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)
            f.flush()
            os.fsync(f.fileno())

    replace_atomically(path, write)


def write_text(path: Path, text: str) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def read_json(path: Path) -> dict:
    """A JSON object from `path`; `UnreadableFile` naming the file when it is not one."""
    try:
        with path.open(encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnreadableFile(f"{path} cannot be read as JSON ({_clause(exc)}); remove it or restore it.") from None
    if not isinstance(data, dict):
        raise UnreadableFile(f"{path} holds a JSON {type(data).__name__}, not an object; remove it or restore it.")
    return data


def _clause(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
