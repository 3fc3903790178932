"""The offline labelled data of the accuracy tasks, split once and for all.

    trec(fine)              UIUC/TREC questions (bench/data), 6 coarse or 50 fine classes; 5,380 questions
    rotten_tomatoes()       Pang & Lee snippets (bench/data), fresh vs rotten; 12,752 snippets
    mnist_5k()              5,000 MNIST digits (bench/data), 10 classes
    fashion_mnist(dir)      Fashion-MNIST, 60k train / 10k test (Debian package dataset-fashion-mnist)

Splits never change: an example's split is decided by the SHA-256 of its content (text, or image bytes) under a
fixed salt, so it depends on neither file order, nor library versions, nor the cell's seed. The examples are sorted
by that hash; the first `n_test` are the test set, the next `n_val` the validation set, the rest the training set.
Duplicated texts are kept once; a text given two different labels is dropped.

Pixel arrays are uint8 (N, 28, 28); labels int64 (N,), ids of the sorted class names unless a dataset says.
Nothing here imports torch.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import hashlib
import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from bench.core.errors import BenchError

SPLIT_SALT = "randlora-bench split v1"  # changing it changes every split: never do
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"
)  # fmt: skip


class MissingResource(BenchError):
    """A data file or package the task needs is absent; the message says how to install it (one sentence)."""


@dataclass(frozen=True)
class Split:
    inputs: Sequence  # list[str] of texts, or uint8 array (N, 28, 28) of images
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    name: str
    class_names: tuple[str, ...]  # label id -> name
    train: Split
    val: Split
    test: Split

    @property
    def num_labels(self) -> int:
        return len(self.class_names)

    def eval_limited(self, limit: int | None) -> Dataset:
        """The first `limit` examples of validation and of test (quick runs); None: all of them."""
        if limit is None:
            return self
        val, test = (Split(s.inputs[:limit], s.labels[:limit]) for s in (self.val, self.test))
        return Dataset(self.name, self.class_names, self.train, val, test)


def content_key(example: str | bytes) -> str:
    data = example.encode("utf-8") if isinstance(example, str) else example
    return hashlib.sha256(SPLIT_SALT.encode() + b"\0" + data).hexdigest()


def split_indices(keys: Sequence[str | bytes], n_val: int, n_test: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices into `keys`, decided by each key's salted hash: disjoint, and the same forever."""
    if n_val + n_test >= len(keys):
        raise ValueError(f"{len(keys)} examples leave no training set after {n_val} validation and {n_test} test")
    order = np.array(sorted(range(len(keys)), key=lambda i: content_key(keys[i])), dtype=np.int64)
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def _split(name: str, class_names, inputs, labels: np.ndarray, keys, n_val: int, n_test: int) -> Dataset:
    train, val, test = split_indices(keys, n_val, n_test)

    def take(idx: np.ndarray) -> Split:
        picked = inputs[idx] if isinstance(inputs, np.ndarray) else [inputs[i] for i in idx]
        return Split(picked, labels[idx])

    return Dataset(name, tuple(class_names), take(train), take(val), take(test))


def _shipped(filename: str):
    """A file of bench/data (package data), or MissingResource."""
    path = resources.files("bench").joinpath("data", filename)
    if not path.is_file():
        raise MissingResource(
            f"the data file bench/data/{filename} is missing from this installation; "
            "reinstall the project from a full checkout (pip install -e .), which ships it."
        )
    return path


def _labelled_texts(pairs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Texts kept once, in first-seen order; a text seen with two labels is dropped."""
    label_of: dict[str, str] = {}
    conflicted: set[str] = set()
    for text, label in pairs:
        if label_of.setdefault(text, label) != label:
            conflicted.add(text)
    texts = [t for t in label_of if t not in conflicted]
    return texts, [label_of[t] for t in texts]


def trec(fine: bool) -> Dataset:
    """TREC question classification: 6 coarse classes (ABBR, DESC, ...) or 50 fine ones (`COARSE:fine`).

    1,000 test and 500 validation questions; the split is the same for both granularities.
    """
    raw = _shipped("trec_question_labels.txt.gz").read_bytes()
    pairs = []
    for line in gzip.decompress(raw).decode("latin-1").splitlines():
        if line.strip():
            label, question = line.split(" ", 1)
            pairs.append((question.strip(), label))
    texts, fine_labels = _labelled_texts(pairs)
    names = fine_labels if fine else [label.split(":", 1)[0] for label in fine_labels]
    classes = sorted(set(names))
    labels = np.array([classes.index(n) for n in names], dtype=np.int64)
    return _split("trec50" if fine else "trec6", classes, texts, labels, texts, n_val=500, n_test=1000)


def rotten_tomatoes() -> Dataset:
    """Rotten Tomatoes snippets: label 1 = fresh, 0 = rotten ("plot" rows dropped); 1,000 val, 2,000 test."""
    raw = _shipped("rotten_tomatoes_corpus_full.csv.bz2").read_bytes()
    reader = csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))
    pairs = [(row["text"].strip(), row["category"]) for row in reader if row["category"] in ("fresh", "rotten")]
    texts, categories = _labelled_texts([(t, c) for t, c in pairs if t])
    labels = np.array([c == "fresh" for c in categories], dtype=np.int64)
    return _split("rotten-tomatoes", ("rotten", "fresh"), texts, labels, texts, n_val=1000, n_test=2000)


def mnist_5k() -> Dataset:
    """5,000 MNIST digits (500 per class): 3,000 train, 1,000 val, 1,000 test; pixels uint8 (N, 28, 28)."""
    raw = gzip.decompress(_shipped("mnist_5k.csv.gz").read_bytes())
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784]
    keys = [img.tobytes() + bytes([lab]) for img, lab in zip(images, labels)]
    return _split("mnist-5k", [str(d) for d in range(10)], images, labels, keys, n_val=1000, n_test=1000)


def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped), as LeCun's format defines it: magic (0, 0, type 0x08 = uint8, ndim), sizes, data."""
    data = gzip.decompress(path.read_bytes())
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()  # writable


def fashion_mnist(directory: str | Path | None = None) -> tuple[Split, Split]:
    """(train 60k, test 10k) of Fashion-MNIST from the Debian package's gzipped IDX files (or `directory`)."""
    root = Path(directory) if directory else FASHION_MNIST_DIR
    kinds = (("images", 3), ("labels", 1))
    files = [f"{part}-{kind}-idx{dims}-ubyte.gz" for part in ("train", "t10k") for kind, dims in kinds]
    missing = [name for name in files if not (root / name).is_file()]
    if missing:
        raise MissingResource(
            f"Fashion-MNIST is not in {root} ({missing[0]} is missing); install the Debian package "
            "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or point fashion_mnist_dir at its files."
        )
    arrays = [_read_idx(root / name) for name in files]
    return Split(arrays[0], arrays[1].astype(np.int64)), Split(arrays[2], arrays[3].astype(np.int64))
