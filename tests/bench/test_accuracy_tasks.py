"""The accuracy tasks as the harness runs them: their grid fields, their models, and a few training steps on each
that beat the untrained model on a fixed held-out batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.spec import grid as matrix
from bench.spec import methods
from bench.worker.measure import Options, run
from bench.core.errors import BenchError
from bench.spec.tasks import TASKS

from .conftest import grid_from_text, needs_fashion_mnist, one_cell

FIXTURE = str(Path(__file__).parent / "fixtures" / "hf_text")
TINY_VIT = {"pretrain_samples": 512, "pretrain_epochs": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vit_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("vit-cache"))


def _adapted(cell):
    """The task's model, adapted by the cell's method exactly as bench.worker.measure does it, and the task's info."""
    torch.manual_seed(cell.seed)
    model, info = TASKS[cell.task].build_model(cell, torch.device("cpu"), torch.float32)
    trainable = methods.resolve_modules(model, cell.trainable_modules, "trainable_modules", linear_only=False)
    targets = methods.resolve_modules(model, cell.targets, "targets", linear_only=True, exclude=trainable)
    return methods.METHODS[cell.method.name].adapt(model, cell.method.kwargs, targets, trainable), info


def _held_out(model, split, n: int = 128) -> tuple[float, float]:
    """(loss, accuracy) on the first n examples of `split`, in eval mode."""
    batch = {**split.rows(slice(0, n)), "labels": split.labels[:n]}
    model.eval()
    with torch.no_grad():
        out = model(**batch)
    model.train()
    return out.loss.item(), (out.logits.argmax(-1) == batch["labels"]).float().mean().item()


def _train(model, info, cell) -> None:
    task = TASKS[cell.task]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cell.lr)
    next_batch = task.batches(info, cell.batch_size, cell.seq_len, torch.device("cpu"), cell.seed)
    model.train()
    for step in range(cell.steps):
        task.loss(model, next_batch(step)).backward()
        optimizer.step()
        optimizer.zero_grad()


def _class_prior(info, split, n: int = 128) -> tuple[float, float]:
    """(loss, accuracy) on the first n examples of `split` of the best input-blind model: the training set's class
    frequencies (a model can get there with labels that do not match their inputs)."""
    frequencies = torch.bincount(info.data.train.labels, minlength=info.data.num_labels).double()
    frequencies /= frequencies.sum()
    labels = split.labels[:n]
    loss = -frequencies[labels].clamp_min(1e-12).log().mean().item()
    return loss, frequencies.argmax().eq(labels).double().mean().item()


LORA = {"name": "lora", "r": 8, "alpha": 16}
BEATS_UNTRAINED = {  # task: fields of a cell trained for `steps` steps (sized to run in seconds on a CPU)
    "trec6": {"model": "minilm-l6", "steps": 16, "batch_size": 16, "seq_len": 16, "lr": 2e-3},
    "trec50": {"model": "minilm-l6", "steps": 16, "batch_size": 16, "seq_len": 16, "lr": 3e-3},
    "rotten-tomatoes": {"model": "minilm-l6", "steps": 32, "batch_size": 16, "seq_len": 32, "lr": 3e-3},
    "hf-text": {"model": "minilm-l6", "steps": 8, "batch_size": 8, "seq_len": 16, "lr": 3e-3,
                "task_args": {"dataset": FIXTURE, "val_size": 40}},
    # the tiny base of the tests (4 pretraining steps) is nearly random: only full fine-tuning moves in 60 steps
    # (held-out loss 2.48 untrained, 2.31 prior, 2.10 after; accuracy 0.05, 0.05, 0.20)
    "mnist-transfer": {"model": "vit-fmnist", "steps": 60, "batch_size": 32, "lr": 2e-3, "method": "full"},
}


@pytest.mark.parametrize(
    "task", [pytest.param(t, marks=needs_fashion_mnist) if t == "mnist-transfer" else t for t in sorted(BEATS_UNTRAINED)]
)
def test_a_few_steps_beat_the_untrained_model_and_the_class_prior_on_a_fixed_held_out_batch(task, vit_cache):
    fields = {"method": LORA, **BEATS_UNTRAINED[task]}
    task_args = {**fields.pop("task_args", {}), "eval_limit": 128}
    if task == "mnist-transfer":
        task_args.update(TINY_VIT, cache_dir=vit_cache)
    cell = one_cell(task=task, task_args=task_args, **fields)
    model, info = _adapted(cell)
    fixed = info.data.val  # held out: never trained on
    loss_before, accuracy_before = _held_out(model, fixed)
    prior_loss, prior_accuracy = _class_prior(info, fixed)
    _train(model, info, cell)
    loss_after, accuracy_after = _held_out(model, fixed)
    assert loss_after < min(loss_before, prior_loss) - 0.02, (loss_before, prior_loss, loss_after)
    assert accuracy_after > max(accuracy_before, prior_accuracy), (accuracy_before, prior_accuracy, accuracy_after)


def test_text_tasks_target_every_encoder_linear_and_train_the_head_and_pooler_in_every_method():
    for method in (LORA, {"name": "randlora", "r": 32}, "full"):
        cell = one_cell(model="minilm-l6", task="trec6", method=method, task_args={"eval_limit": 8})
        model, _ = _adapted(cell)
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert {"classifier.weight", "bert.pooler.dense.weight", "bert.pooler.dense.bias"} <= trainable
        if method != "full":
            adapted = [n for n, m in model.named_modules() if isinstance(getattr(m, "base", None), torch.nn.Linear)]
            assert len(adapted) == 6 * 6  # q, k, v, attention output, intermediate, output in each of 6 layers
            assert not any("pooler" in n or "classifier" in n for n in adapted)


def test_an_accuracy_cell_records_validation_test_throughput_and_memory():
    cell = one_cell(model="minilm-l6", task="hf-text", method=LORA, lr=3e-3, batch_size=8, seq_len=16,
                    task_args={"dataset": FIXTURE, "val_size": 40, "eval_limit": 32})
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    metrics = record["task_metrics"]
    for key in ("val_accuracy", "val_macro_f1", "test_accuracy", "test_macro_f1", "accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["accuracy"] == metrics["test_accuracy"] and metrics["test_examples"] == 32
    assert record["train"]["samples_per_s"] > 0 and record["train"]["trainable_params"] > 0
    assert record["memory"]["param_bytes"] > 0 and record["memory"]["host_rss_peak_bytes"] > 0


@needs_fashion_mnist
def test_the_vision_task_records_its_base_s_seed_and_pretraining_accuracy(vit_cache):
    cell = one_cell(model="vit-fmnist", task="mnist-transfer", method=LORA, lr=3e-3, batch_size=32,
                    task_args={**TINY_VIT, "cache_dir": vit_cache, "eval_limit": 64})
    assert cell.seq_len == 50  # 49 patches and CLS, whatever the grid says
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    metrics = record["task_metrics"]
    (folder,) = Path(vit_cache).glob("vit-fmnist-*")
    pretrain = json.loads((folder / "pretrain.json").read_text())
    assert metrics["base_pretrain_seed"] == pretrain["seed"] == 0
    assert metrics["base_pretrain_accuracy"] == pretrain["fashion_mnist_test_accuracy"] > 0.1
    assert (folder / "model.safetensors").stat().st_size < 4e6  # small enough to carry


GRID = """
defaults: {{model: minilm-l6, task: trec6, method: lora, task_args: {args}}}
include: [{{}}]
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{eval_batch_size: 0}", "task_args.eval_batch_size of task 'trec6' is 0; it must be an integer >= 1."),
        ("{model_path: x}", "task_args of task 'trec6' has no argument 'model_path'; its arguments are model_dir"),
        ("[1, 2]", "it must be a mapping from the task's argument names to values."),
    ],
)
def test_bad_task_args_are_one_line_naming_the_argument(args, message):
    with pytest.raises(BenchError, match=None) as caught:
        grid_from_text(GRID.format(args=args))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_task_s_own_model_must_be_named_and_only_by_its_tasks():
    with pytest.raises(BenchError, match="task 'trec6' trains its own model, so model must be 'minilm-l6'"):
        grid_from_text("defaults: {model: tiny-bert, task: trec6}\ninclude: [{}]")
    with pytest.raises(BenchError, match="model 'vit-fmnist' is the model of task.s. mnist-transfer"):
        grid_from_text("defaults: {model: vit-fmnist}\ninclude: [{}]")
    with pytest.raises(BenchError, match="task 'throughput' takes no task_args"):
        grid_from_text("defaults: {task_args: {eval_limit: 3}}\ninclude: [{}]")


def test_task_args_are_part_of_the_hash_and_throughput_hashes_did_not_move():
    a = one_cell(model="minilm-l6", task="trec6", method="lora")
    b = one_cell(model="minilm-l6", task="trec6", method="lora", task_args={"eval_batch_size": 64})
    c = one_cell(model="minilm-l6", task="trec6", method="lora", task_args={"eval_batch_size": 256})  # the default
    assert a.hash != b.hash and a.hash == c.hash
    assert "task_args" not in one_cell().identity()  # cells of the throughput task hash as before


def test_the_cpu_smoke_grid_parses_and_its_cells_carry_lr_in_their_labels():
    grid = matrix.load("accuracy-cpu-smoke")
    assert {c.task for c in grid.cells} >= {"trec6", "mnist-transfer", "full-rank-probe"}
    assert all("lr=" in c.label() for c in grid.cells)
