"""A pretrained base built once per recipe: a folder named by the recipe, filled in a scratch folder and renamed
into place under a file lock, so concurrent cells build it once and a killed build never passes for a finished one.
(vit.py and lm_base.py keep their bases this way.)"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

DEFAULT_CACHE = Path("~/.cache/randlora-bench")
FILES = ("config.json", "model.safetensors", "pretrain.json")  # what a finished base folder holds


def is_complete(folder: Path, files: tuple[str, ...] = FILES) -> bool:
    return all((folder / name).is_file() for name in files)


@contextlib.contextmanager
def locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(folder: Path, build: Callable[[Path], object], files: tuple[str, ...] = FILES) -> Path:
    """`folder`, after `build(scratch)` has filled it (with `files`) if it was not complete yet (one builder at a
    time)."""
    if is_complete(folder, files):
        return folder
    with locked(folder.parent / f".{folder.name}.lock"):
        if not is_complete(folder, files):
            scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
            try:
                build(scratch)
                scratch.chmod(0o755)  # mkdtemp's 0700 would follow the folder wherever it is carried
                if folder.exists():  # an incomplete leftover of a killed run
                    shutil.rmtree(folder)
                os.replace(scratch, folder)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    return folder
