"""Any Hugging Face `datasets` text-classification dataset, by name or local path, on MiniLM (`hf-text`).

    task: hf-text
    task_args: {dataset: imdb, text_column: text, label_column: label}      # online: from the hub
    task_args: {dataset: path/to/folder}                                    # offline: train.csv, test.csv, ...

The dataset's own train and test splits are used; the validation split is the dataset's `val_split` if named,
else `val_size` examples carved out of train by content hash (bench/spec/tasks/data.py), so it never changes.
Class names come from a ClassLabel feature, else from the sorted distinct label values.
"""

from __future__ import annotations

import numpy as np

from bench.spec.tasks import data
from bench.spec.tasks.args import Arg, integer, optional, text
from bench.spec.tasks.text import ARGS as MINILM_ARGS
from bench.spec.tasks.text import register_text_task

ARGS = {
    "dataset": Arg(None, text, "a hub id or a local folder / script, as datasets.load_dataset takes it (required)"),
    "subset": Arg(None, optional(text), "the dataset's configuration name, if it has several"),
    "text_column": Arg("text", text, "the column holding the text"),
    "label_column": Arg("label", text, "the column holding the label"),
    "train_split": Arg("train", text, "the split to train on"),
    "test_split": Arg("test", text, "the split to report"),
    "val_split": Arg(None, optional(text), "the split to choose the learning rate on; null: carved from train"),
    "val_size": Arg(1000, integer(1), "examples carved out of train for validation when val_split is null"),
    **MINILM_ARGS,
}


def _class_names(feature, values: list) -> tuple[list[str], dict]:
    """(class names, label value -> id)."""
    names = getattr(feature, "names", None)
    if names is not None:  # a ClassLabel: values are already ids
        return list(names), {i: i for i in range(len(names))}
    distinct = sorted(set(values))
    return [str(v) for v in distinct], {v: i for i, v in enumerate(distinct)}


def load(args: dict) -> data.Dataset:
    try:
        import datasets
    except ImportError:
        raise data.MissingResource(
            "task 'hf-text' reads its data with the Hugging Face datasets package, which is not installed: "
            "pip install datasets (or pip install '.[accuracy]')."
        ) from None
    loaded = datasets.load_dataset(args["dataset"], args["subset"])
    wanted = [args["train_split"], args["test_split"]] + ([args["val_split"]] if args["val_split"] else [])
    for split in wanted:
        if split not in loaded:
            raise ValueError(f"dataset {args['dataset']!r} has no split {split!r}; it has {', '.join(loaded)}")
    train = loaded[args["train_split"]]
    for column in (args["text_column"], args["label_column"]):
        if column not in train.column_names:
            columns = ", ".join(train.column_names)
            raise ValueError(f"dataset {args['dataset']!r} has no column {column!r}; it has {columns}")
    names, ids = _class_names(train.features[args["label_column"]], train[args["label_column"]])

    def split_of(rows) -> data.Split:
        unknown = sorted({v for v in rows[args["label_column"]] if v not in ids}, key=str)
        if unknown:
            raise ValueError(f"label {unknown[0]!r} of dataset {args['dataset']!r} is not among the training labels")
        labels = np.array([ids[v] for v in rows[args["label_column"]]], dtype=np.int64)
        return data.Split(list(rows[args["text_column"]]), labels)

    whole_train, test = split_of(train), split_of(loaded[args["test_split"]])
    if args["val_split"]:
        return data.Dataset(args["dataset"], tuple(names), whole_train, split_of(loaded[args["val_split"]]), test)
    rest, val, _ = data.split_indices(whole_train.inputs, n_val=args["val_size"], n_test=0)

    def take(index) -> data.Split:
        return data.Split([whole_train.inputs[i] for i in index], whole_train.labels[index])

    return data.Dataset(args["dataset"], tuple(names), take(rest), take(val), test)


register_text_task(
    "hf-text",
    "a Hugging Face datasets text-classification dataset (task_args.dataset), on pretrained MiniLM-L6",
    load,
    ARGS,
)
