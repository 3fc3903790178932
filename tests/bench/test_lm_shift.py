"""The language-model shift task (`lm-shift`): its corpora and splits, its cached base, a cell run end to end, and
its arguments. Shapes are tiny (the `tiny` base, a few pretraining steps) so the whole file runs in seconds."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.spec import grid as matrix
from bench.spec.tasks import corpus, data, lm_base
from bench.tools import budget
from bench.worker.measure import Options, run
from bench.core.errors import BenchError

from .conftest import grid_from_text, one_cell

pytestmark = pytest.mark.usefixtures("one_thread")
TINY_BASE = {"base": "tiny", "pretrain_steps": 2}


@pytest.fixture(scope="module")
def lm_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lm-cache"))


def _windows(stream: np.ndarray, size: int = 64) -> set[bytes]:
    return {stream[i : i + size].tobytes() for i in range(0, len(stream) - size, size)}


def test_the_review_splits_are_the_same_every_time_and_share_no_snippet():
    first, again = corpus.film_reviews(), corpus.film_reviews()
    assert first.sha256() == again.sha256()
    reviews = data.rotten_tomatoes()
    train, val, test = (set(split.inputs) for split in (reviews.train, reviews.val, reviews.test))
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(first.val) == sum(len(t.encode()) + 1 for t in reviews.val.inputs)  # each snippet and its EOS
    assert not _windows(first.test) & _windows(first.train)  # no stretch of test text seen in training


def test_the_code_split_holds_out_whole_files_by_path():
    code = corpus.python_code()
    assert code.test is None and 0 < len(code.val) < 0.1 * len(code.train)
    assert code.sha256() == corpus.python_code().sha256()
    assert not _windows(code.val, 256) & _windows(code.train, 256)


def test_encode_ends_every_document_with_eos_and_decodes_back():
    tokens = corpus.encode(["déjà", "vu"])
    assert tokens.tolist() == [*"déjà".encode(), corpus.EOS, *b"vu", corpus.EOS]
    assert corpus.decode(tokens) == "déjà\nvu\n"


def test_the_base_is_pretrained_once_and_a_changed_recipe_gets_a_new_folder(lm_cache, monkeypatch):
    calls = []
    real = lm_base.pretrain
    monkeypatch.setattr(lm_base, "pretrain", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = lm_base.ensure_pretrained(lm_cache, "tiny", 0, 2, "cpu")
    again = lm_base.ensure_pretrained(lm_cache, "tiny", 0, 2, "cpu")
    assert first == again and len(calls) == 1
    record = json.loads((first / "pretrain.json").read_text())
    assert record["steps"] == 2 and math.isfinite(record["code_val_loss"]) and record["train_s"] > 0
    assert record["corpus_sha256"] == corpus.python_code().sha256()
    other = lm_base.cache_folder(lm_cache, "tiny", 0, 3, record["corpus_sha256"])
    assert other != first and other.parent == first.parent
    assert lm_base.cache_folder(lm_cache, "tiny", 1, 2, record["corpus_sha256"]) != first
    assert not list(Path(lm_cache).glob(".byte-llama-*.*/"))  # no scratch folder left behind


def test_a_cell_runs_through_the_harness_and_scores_validation_and_test(lm_cache):
    cell = one_cell(model="byte-llama", task="lm-shift", method={"name": "lora", "r": 2, "alpha": 4}, lr=3e-3,
                    batch_size=4, seq_len=32, task_args={**TINY_BASE, "cache_dir": lm_cache, "eval_limit": 4})
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    metrics = record["task_metrics"]
    for split in ("val", "test"):
        assert 0 < metrics[f"{split}_loss"] < 10 and math.isfinite(metrics[f"{split}_perplexity"])
        assert 0 <= metrics[f"{split}_accuracy"] <= 1 and metrics[f"{split}_tokens"] == 4 * 31
    assert metrics["accuracy"] == metrics["test_accuracy"]
    assert metrics["adapt_corpus_sha256"] == corpus.film_reviews().sha256()
    shapes = budget.target_shapes("byte-llama-tiny")
    assert len(shapes) == 2 * 7 and record["train"]["trainable_params"] == budget.lora_params(shapes, 2)


def test_the_batches_of_a_step_are_the_same_when_asked_for_twice_and_differ_between_steps(lm_cache):
    import torch

    from bench.spec.tasks import TASKS

    cell = one_cell(model="byte-llama", task="lm-shift", method="full", seq_len=16,
                    task_args={**TINY_BASE, "cache_dir": lm_cache})
    _, info = TASKS["lm-shift"].build_model(cell, torch.device("cpu"), torch.float32)
    batch = TASKS["lm-shift"].batches(info, 3, 16, torch.device("cpu"), seed=5)
    assert torch.equal(batch(0)["input_ids"], batch(0)["input_ids"]) and batch(0)["input_ids"].shape == (3, 16)
    assert not torch.equal(batch(0)["input_ids"], batch(1)["input_ids"])


GRID = """
defaults: {{model: byte-llama, task: lm-shift, method: lora, {fields}}}
include: [{{}}]
"""


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("task_args: {base: huge}", "task_args.base of task 'lm-shift' is 'huge'; allowed values are 'tiny', "),
        ("task_args: {pretrain_steps: 0}", "task_args.pretrain_steps of task 'lm-shift' is 0; it must be an integer"),
        ("seq_len: 512", "seq_len of task 'lm-shift' is 512; it must be in [2, 128]"),
    ],
)
def test_bad_task_args_are_refused_in_one_sentence(fields, message):
    with pytest.raises(BenchError) as caught:
        grid_from_text(GRID.format(fields=fields))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["accuracy-cpu-lm-pilot", "accuracy-h200-lm"])
def test_the_lm_grids_match_lora_and_randlora_counts(name):
    cells = matrix.load(name).cells
    base = {dict(c.task_args)["base"] for c in cells}.pop()
    shapes = budget.target_shapes(f"byte-llama-{base}")
    lora = {c.method.kwargs["r"] for c in cells if c.method.name == "lora"}
    rand = {c.method.kwargs["r"] for c in cells if c.method.name == "randlora"}
    assert {"full"} <= {c.method.name for c in cells} and len(lora) >= 3
    assert rand == {budget.matched_randlora_rank(shapes, r) for r in lora}


def test_the_h200_lm_grid_sweeps_four_rates_with_three_seeds_for_every_configuration():
    rates, seeds = {}, {}
    for cell in matrix.load("accuracy-h200-lm").cells:
        rates.setdefault(cell.method, set()).add(cell.lr)
        seeds.setdefault((cell.method, cell.lr), set()).add(cell.seed)
    assert len(rates) == 15 and all(len(r) >= 4 for r in rates.values())
    assert all(s == {0, 1, 2} for s in seeds.values())
