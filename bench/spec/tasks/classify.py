"""What the classification tasks share: their splits on the device, shuffled training batches, val/test scores.

A classification task's `build_model` returns a `TaskInfo`: the model's `ModelInfo` plus a `ClassificationData`
(train / val / test tensors already on the device, so that no training step waits for data). `batches` walks the
training set in epochs, each in its own seeded order (the cell's seed), dropping the last incomplete batch.
`evaluate` scores the validation AND the test split; the validation numbers are for choosing a learning rate,
the test numbers for reporting (bench/views/accuracy.py never looks at test to choose).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from bench.spec.presets import ModelInfo


@dataclass(frozen=True)
class Tensors:
    inputs: dict[str, torch.Tensor]  # model inputs, examples along dim 0 (input_ids (N, S), pixel_values (N, C, H, W))
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index) -> dict[str, torch.Tensor]:
        return {name: value[index] for name, value in self.inputs.items()}


@dataclass(frozen=True)
class ClassificationData:
    train: Tensors
    val: Tensors
    test: Tensors
    num_labels: int
    eval_batch_size: int
    metadata: dict = field(default_factory=dict)  # recorded beside the metrics (e.g. the base's pretraining accuracy)


@dataclass(frozen=True)
class TaskInfo(ModelInfo):
    """A ModelInfo that also carries the task's data (or, for the probe, its teacher)."""

    data: Any


def with_data(info: ModelInfo, data: Any) -> TaskInfo:
    return TaskInfo(**{f.name: getattr(info, f.name) for f in fields(ModelInfo)}, data=data)


def shuffled_batches(info: TaskInfo, batch_size: int, seq_len: int, device, seed: int):
    """next_batch(step): batch `step` of an endless sequence of epochs, each a fresh seeded permutation."""
    train: Tensors = info.data.train
    per_epoch = len(train) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train)} training examples of the task")
    current: dict[int, torch.Tensor] = {}  # the epoch in progress -> its order, on the device

    def order(epoch: int) -> torch.Tensor:
        if epoch not in current:
            generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
            current.clear()
            current[epoch] = torch.randperm(len(train), generator=generator).to(device)
        return current[epoch]

    def next_batch(step: int) -> dict[str, torch.Tensor]:
        epoch, position = divmod(step, per_epoch)
        index = order(epoch)[position * batch_size : (position + 1) * batch_size]
        return {**train.rows(index), "labels": train.labels[index]}

    return next_batch


@torch.no_grad()
def predict(model, split: Tensors, batch_size: int) -> torch.Tensor:
    """Predicted class ids (N,) in eval mode (no dropout); the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        predictions = [
            model(**split.rows(slice(i, i + batch_size))).logits.argmax(-1) for i in range(0, len(split), batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(predictions)


def scores(predicted: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1. F1 of a class = 2·TP / (predicted + true); the macro average runs over the classes
    that occur in the labels or the predictions (scikit-learn's `f1_score(average="macro")`)."""
    predicted, labels = predicted.cpu(), labels.cpu()
    hits = torch.bincount(labels[predicted == labels], minlength=num_labels).double()
    occurrences = torch.bincount(predicted, minlength=num_labels) + torch.bincount(labels, minlength=num_labels)
    occurrences = occurrences.double()
    present = occurrences > 0
    f1 = 2 * hits[present] / occurrences[present]
    return {"accuracy": (predicted == labels).double().mean().item(), "macro_f1": f1.mean().item()}


def evaluate(model, info: TaskInfo, device, seed: int) -> dict:
    """val_/test_ accuracy and macro_f1; `accuracy` (the table's column) is the test accuracy."""
    data: ClassificationData = info.data
    metrics: dict = {}
    for name, split in (("val", data.val), ("test", data.test)):
        for key, value in scores(predict(model, split, data.eval_batch_size), split.labels, data.num_labels).items():
            metrics[f"{name}_{key}"] = value
    metrics["accuracy"] = metrics["test_accuracy"]
    metrics.update(train_examples=len(data.train), val_examples=len(data.val), test_examples=len(data.test))
    metrics.update(data.metadata)
    return metrics
