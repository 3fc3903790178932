"""Vision transfer: the Fashion-MNIST-pretrained ViT (bench/spec/tasks/vit.py) adapted on MNIST-5k (`mnist-transfer`).

5,000 MNIST digits (bench/data), split once by content hash: 3,000 train, 1,000 validation, 1,000 test. The
base is built once per recipe and cached (its seed and Fashion-MNIST test accuracy are recorded in every row as
base_pretrain_seed and base_pretrain_accuracy); the cell's seed draws the new 10-way head and the batch order.
Every encoder Linear is targeted; the head is trained in full by every method (a ViT classifier has no pooler).
"""

from __future__ import annotations

from bench.spec.tasks.base import Task, model_loss, register
from bench.spec.tasks import classify
from bench.spec.tasks import data
from bench.spec.tasks import vit
from bench.spec.tasks.args import Arg, integer, one_gpu, optional, resolve_args, text

NAME, MODEL = "mnist-transfer", "vit-fmnist"
TARGETS, TRAINABLE = ("all-linear",), ("classifier",)

ARGS = {
    "cache_dir": Arg(None, optional(text), "where the pretrained ViT is cached; null: ~/.cache/randlora-bench"),
    "pretrain_seed": Arg(0, integer(0), "seed of the ViT's pretraining (not the cell's seed: one base for all)"),
    "pretrain_epochs": Arg(2, integer(1), "epochs of Fashion-MNIST in pretraining"),
    "pretrain_samples": Arg(
        None, optional(integer(128)), "pretrain on the first N training images, score on the first N test images "
        "(quick runs); null: all 60k and 10k"
    ),
    "fashion_mnist_dir": Arg(None, optional(text), "the Fashion-MNIST IDX files; null: the Debian package's"),
    "eval_batch_size": Arg(1000, integer(1), "images per forward pass when scoring validation and test"),
    "eval_limit": Arg(None, optional(integer(1)), "score only the first N of validation and of test (smoke runs)"),
}


def resolve(values: dict) -> dict:
    values["task_args"] = resolve_args(NAME, ARGS, values["task_args"])
    one_gpu(NAME, values)
    values["seq_len"] = vit.TOKENS  # fixed by the image and patch sizes, whatever the grid says
    if values["targets"] is None:
        values["targets"] = TARGETS
    if values["trainable_modules"] is None:
        values["trainable_modules"] = TRAINABLE
    return values


def build_model(cell, device, dtype):
    import torch

    from bench.spec.presets import ModelInfo

    args = cell.task_kwargs
    folder = vit.ensure_pretrained(
        args["cache_dir"], args["pretrain_seed"], args["pretrain_epochs"], args["pretrain_samples"],
        args["fashion_mnist_dir"], device,
    )  # fmt: skip
    model, record = vit.load_for_transfer(folder, device, dtype)
    digits = data.mnist_5k().eval_limited(args["eval_limit"])

    def tensors(split: data.Split) -> classify.Tensors:
        labels = torch.as_tensor(split.labels, dtype=torch.int64).to(device)
        return classify.Tensors({"pixel_values": vit.pixels(split.inputs, device, dtype)}, labels)

    metadata = {
        "base_pretrain_seed": record["seed"],
        "base_pretrain_epochs": record["epochs"],
        "base_pretrain_accuracy": record["fashion_mnist_test_accuracy"],
    }
    splits = [tensors(s) for s in (digits.train, digits.val, digits.test)]
    task_data = classify.ClassificationData(*splits, num_labels=10, eval_batch_size=args["eval_batch_size"],
                                            metadata=metadata)
    config = model.config
    info = ModelInfo(
        inputs="images",
        head="classification",
        vocab_size=None,
        num_labels=10,
        image_size=config.image_size,
        num_channels=config.num_channels,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
    )
    return model, classify.with_data(info, task_data)


register(
    Task(
        NAME,
        "a Fashion-MNIST-pretrained ViT (built once, cached) adapted on MNIST-5k (val/test accuracy, macro-F1)",
        batches=classify.shuffled_batches,
        loss=model_loss,
        evaluate=classify.evaluate,
        build_model=build_model,
        model=MODEL,
        resolve=resolve,
    )
)
