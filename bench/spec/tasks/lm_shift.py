"""Language-model domain shift (`lm-shift`): a byte Llama pretrained on Python code (lm_base.py) adapted to reviews.

The question it is built to ask: is LoRA's gap to full fine-tuning for lack of parameters or for lack of rank?
Code and English prose share an alphabet but little else, so moving the base to the reviews asks much of every
projection; on this task full fine-tuning ends well ahead of a low-rank LoRA, which leaves room to see whether a
full-rank update at LoRA's parameter count (RandLoRA) closes the gap.

Data (corpus.py): the base is pretrained once per recipe on the standard library's code and cached; cells adapt
it with causal-LM loss on windows of the 9,752 training snippets of Rotten Tomatoes at random offsets (the cell's
seed draws them, and the adapter's initialisation), and score the 1,000 validation and 2,000 test snippets cut
into consecutive windows of the cell's seq_len. Every Llama projection is targeted; nothing is trained in full by
the adapters (embeddings, norms and the output layer stay frozen; full fine-tuning trains them all).

Metrics: val_/test_ loss (mean next-byte cross-entropy, nats), perplexity (per byte), bits_per_byte, accuracy
(next-byte top-1; `accuracy` = test_accuracy, what bench/views/accuracy.py selects on and reports), the base's
recipe and its zero-shot review loss, and the SHA-256 of both corpora.
"""

from __future__ import annotations

import math

from bench.spec.tasks.base import Task, model_loss, register
from bench.spec.tasks import classify, corpus, lm_base
from bench.spec.tasks.args import Arg, integer, one_gpu, optional, resolve_args, text

NAME, MODEL = "lm-shift", "byte-llama"
TARGETS, TRAINABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), ()


def _base(value) -> str | None:
    return None if value in lm_base.BASES else f"allowed values are {', '.join(map(repr, lm_base.BASES))}"


ARGS = {
    "cache_dir": Arg(None, optional(text), "where the pretrained base is cached; null: ~/.cache/randlora-bench"),
    "base": Arg("small", _base, "the base's size (lm_base.BASES): tiny (tests), small (CPU), medium (GPU)"),
    "pretrain_seed": Arg(0, integer(0), "seed of the base's pretraining (not the cell's seed: one base for all)"),
    "pretrain_steps": Arg(1200, integer(1), "steps of 16 windows of 128 code bytes in pretraining"),
    "eval_batch_size": Arg(64, integer(1), "windows per forward pass when scoring validation and test"),
    "eval_limit": Arg(None, optional(integer(1)), "score only the first N windows of validation and of test"),
}


def resolve(values: dict) -> dict:
    values["task_args"] = resolve_args(NAME, ARGS, values["task_args"])
    return on_the_base(NAME, values)


def on_the_base(task: str, values: dict) -> dict:
    """The checks and defaults of a task on the byte Llama (this one, update_probe.py): one GPU, a seq_len within
    the base's pretraining context, every projection targeted, nothing trained in full."""
    one_gpu(task, values)
    if not 2 <= values["seq_len"] <= lm_base.CONTEXT:
        raise ValueError(f"seq_len of task {task!r} is {values['seq_len']}; it must be in [2, {lm_base.CONTEXT}], "
                         "the base's pretraining context.")
    if values["targets"] is None:
        values["targets"] = TARGETS
    if values["trainable_modules"] is None:
        values["trainable_modules"] = TRAINABLE
    return values


def build_model(cell, device, dtype):
    import torch

    from bench.spec.presets import model_info

    args = cell.task_kwargs
    folder = lm_base.ensure_pretrained(args["cache_dir"], args["base"], args["pretrain_seed"], args["pretrain_steps"],
                                       device)
    model, record = lm_base.load(folder, device, dtype)
    reviews = corpus.film_reviews()
    streams = {name: torch.as_tensor(getattr(reviews, name).astype("int64")).to(device)
               for name in ("train", "val", "test")}  # fmt: skip
    metadata = {
        "base": folder.name,
        "base_pretrain_seed": record["seed"],
        "base_pretrain_steps": record["steps"],
        "base_code_val_loss": record["code_val_loss"],
        "base_reviews_val_loss": record["reviews_val_loss_zero_shot"],
        "pretrain_corpus_sha256": record["corpus_sha256"],
        "adapt_corpus_sha256": reviews.sha256(),
        "eval_batch_size": args["eval_batch_size"],
        "eval_limit": args["eval_limit"],
        "train_tokens": len(reviews.train),
    }
    info = model_info(model.config, "causal-lm", "tokens")
    return model, classify.with_data(info, {"streams": streams, "seq_len": cell.seq_len, "metadata": metadata})


def batches(info, batch_size: int, seq_len: int, device, seed: int):
    """next_batch(step): `batch_size` windows of the training stream at offsets drawn from (seed, step), so a step
    asked for twice (the harness's memory breakdown re-reads step 0) gets the same batch."""
    import torch

    stream = info.data["streams"]["train"]

    def next_batch(step: int) -> dict:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        tokens = lm_base.random_windows(stream, batch_size, seq_len, generator)
        return {"input_ids": tokens, "labels": tokens}  # the model shifts labels itself

    return next_batch


def evaluate(model, info, device, seed: int) -> dict:
    """val_/test_ loss, perplexity, bits_per_byte and accuracy over the held-out windows; `accuracy` is test's."""
    data = info.data
    metrics: dict = {}
    for name in ("val", "test"):
        result = lm_base.score(model, data["streams"][name], data["seq_len"], data["metadata"]["eval_batch_size"],
                               data["metadata"]["eval_limit"])
        metrics.update({
            f"{name}_loss": result["loss"],
            f"{name}_perplexity": math.exp(result["loss"]),
            f"{name}_bits_per_byte": result["loss"] / math.log(2),
            f"{name}_accuracy": result["accuracy"],
            f"{name}_tokens": result["tokens"],
        })  # fmt: skip
    metrics["accuracy"] = metrics["test_accuracy"]
    metrics.update({k: v for k, v in data["metadata"].items() if k not in ("eval_batch_size", "eval_limit")})
    return metrics


register(
    Task(
        NAME,
        "a byte Llama pretrained on Python code (built once, cached) adapted to film reviews (val/test loss, accuracy)",
        batches=batches,
        loss=model_loss,
        evaluate=evaluate,
        build_model=build_model,
        model=MODEL,
        resolve=resolve,
    )
)
