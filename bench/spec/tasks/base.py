"""The task registry's base: the `Task` type, `register`, and the `throughput` task: what a cell trains on and, optionally, how it is scored.

A task provides
    batches(info, batch_size, seq_len, device, seed) -> next_batch(step) -> dict of model inputs with `labels`
    loss(model, batch) -> scalar tensor
    evaluate(model, info, device, seed) -> {metric: value}   (optional; merged into the cell's result row)
and, for a task that brings its own model or arguments (all optional):
    build_model(cell, device, dtype) -> (model, info)   instead of the cell's preset; `info` is then passed to
                                                        batches and evaluate, so it may carry the task's data
    model                   the name cells of this task must give as `model` (e.g. "minilm-l6"); None: any preset
    resolve(values) -> values   checks `task_args` and fills its defaults (and, for a task's own model, the
                                cell's targets / trainable modules), before the cell is resolved; ValueError
                                (a clause) for bad input

"throughput" trains on random tokens or random images: it measures speed and memory, not learning.
The accuracy tasks (one file per task beside this one) register here the same way; the package's
__init__ imports them all, so `bench.spec.tasks.TASKS` is the whole registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

BATCH_POOL = 4  # distinct batches generated before timing and cycled, so no step pays for data generation


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    batches: Callable
    loss: Callable
    evaluate: Callable | None = None
    build_model: Callable | None = None
    model: str | None = None
    resolve: Callable[[dict], dict] | None = None


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    if task.name in TASKS:
        raise RuntimeError(f"task {task.name!r} registered twice")
    TASKS[task.name] = task
    return task


def random_batches(info, batch_size: int, seq_len: int, device, seed: int) -> Callable[[int], dict]:
    """Random inputs of the model's kind, with labels: token ids (B, S), or images (B, C, H, W) with class ids (B,)."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    pool = []
    for _ in range(BATCH_POOL):
        if info.inputs == "images":
            shape = (batch_size, info.num_channels, info.image_size, info.image_size)
            batch = {"pixel_values": torch.randn(shape, generator=gen, device=device)}
        else:
            batch = {
                "input_ids": torch.randint(0, info.vocab_size, (batch_size, seq_len), generator=gen, device=device)
            }
        if info.head == "causal-lm":
            batch["labels"] = batch["input_ids"]  # the model shifts labels itself
        else:
            batch["labels"] = torch.randint(0, info.num_labels, (batch_size,), generator=gen, device=device)
        pool.append(batch)
    return lambda step: pool[step % len(pool)]


def model_loss(model, batch: dict):
    """The loss transformers computes from `labels`: causal-LM cross-entropy or classification cross-entropy."""
    return model(**batch).loss


register(Task("throughput", "random tokens / images: speed and memory only", random_batches, model_loss))
