"""Byte-level corpora of the language-model shift task: Python code to pretrain on, English film reviews to adapt to.

    python_code()         the Python 3.11 standard library's own source (bench/data/python_stdlib_3.11.jsonl.xz,
                          513 files, 9.6 MB of text): the pretraining corpus
    film_reviews()        the Rotten Tomatoes critics' snippets already shipped for `rotten-tomatoes` (12,752
                          snippets, 1.4 MB of English prose): the adaptation corpus
    write_python_code()   builds the shipped code file from a Python installation (how it was made; run once)

A document is a file (code) or a snippet (reviews). Splits are by document and never change: the review splits
are `data.rotten_tomatoes()`'s (9,752 / 1,000 / 2,000 snippets by content hash); the code holds out every file
whose salted path hash falls in the first `CODE_VAL_SHARE` of the range, for the base's own held-out loss.

Tokens are bytes: a text is its UTF-8 bytes (ids 0-255), each document followed by `EOS` (256). A split becomes
one stream, its documents in a fixed order joined this way; training draws windows of it at random offsets, and
scoring cuts it into consecutive windows. `sha256` of a split's stream goes into every result row.
Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.spec.tasks import data

EOS = 256  # ends every document
VOCAB = 257  # byte ids and EOS
CODE_FILE = "python_stdlib_3.11.jsonl.xz"
CODE_VAL_SHARE = 0.03  # held-out share of the code files (by path hash), scored once after pretraining
# Folders of the standard library that are not ordinary code: tests, third-party packages, data tables (encodings),
# prose (pydoc_data), a retired tool (lib2to3), bundled wheels and demos.
SKIPPED_FOLDERS = frozenset({
    "site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data", "lib2to3", "ensurepip",
    "turtledemo",
})  # fmt: skip


@dataclass(frozen=True)
class Corpus:
    """A corpus split by document: each split one uint16 stream of byte ids and EOS."""

    name: str
    train: np.ndarray  # uint16 (tokens,)
    val: np.ndarray
    test: np.ndarray | None  # None: a pretraining corpus, with no test split

    def sha256(self) -> str:
        """Digest of the streams: which text a result was trained and scored on."""
        digest = hashlib.sha256()
        for stream in (self.train, self.val, self.test):
            if stream is not None:
                digest.update(np.ascontiguousarray(stream, dtype="<u2").tobytes())
        return digest.hexdigest()


def encode(documents: list[str]) -> np.ndarray:
    """Documents -> uint16 (tokens,): each one's UTF-8 bytes followed by EOS."""
    pieces = []
    for text in documents:
        pieces.append(np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16))
        pieces.append(np.array([EOS], dtype=np.uint16))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)


def decode(tokens) -> str:
    """Byte ids back to text, EOS as a newline (for reading samples)."""
    return bytes(10 if t == EOS else int(t) for t in tokens).decode("utf-8", errors="replace")


def _is_held_out(path: str) -> bool:
    return int(data.content_key("code:" + path)[:8], 16) < CODE_VAL_SHARE * 16**8


def python_code() -> Corpus:
    """The standard library's code (shipped): train and val streams, files sorted by path."""
    files = [json.loads(line) for line in lzma.decompress(data._shipped(CODE_FILE).read_bytes()).splitlines()]
    files.sort(key=lambda f: f["path"])
    val = [f["text"] for f in files if _is_held_out(f["path"])]
    train = [f["text"] for f in files if not _is_held_out(f["path"])]
    return Corpus("python-stdlib-3.11", encode(train), encode(val), None)


def film_reviews() -> Corpus:
    """The Rotten Tomatoes snippets in `data.rotten_tomatoes()`'s splits (labels dropped), in its order."""
    reviews = data.rotten_tomatoes()
    return Corpus("rotten-tomatoes", *(encode(list(s.inputs)) for s in (reviews.train, reviews.val, reviews.test)))


def stdlib_files(root: str | Path) -> list[tuple[str, str]]:
    """(path relative to `root`, text) of every .py file under `root` outside SKIPPED_FOLDERS, sorted by path."""
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(s for s in subfolders if s not in SKIPPED_FOLDERS)
        for name in sorted(names):
            if name.endswith(".py"):
                path = Path(folder) / name
                found.append((path.relative_to(root).as_posix(), path.read_text(encoding="utf-8", errors="replace")))
    return sorted(found)


def write_python_code(out: str | Path, root: str | Path | None = None) -> Path:
    """Write the shipped code corpus (JSON lines {"path", "text"}, xz -9e) from the standard library at `root`
    (default: this interpreter's). bench/data's copy was made from CPython 3.11.7."""
    root = Path(root) if root else Path(os.__file__).parent
    lines = "".join(json.dumps({"path": p, "text": t}, ensure_ascii=False) + "\n" for p, t in stdlib_files(root))
    out = Path(out)
    out.write_bytes(lzma.compress(lines.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    return out


if __name__ == "__main__":  # python -m bench.spec.tasks.corpus OUT [STDLIB_ROOT]
    import sys

    print(write_python_code(*sys.argv[1:3]))
