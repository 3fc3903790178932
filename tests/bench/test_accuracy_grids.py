"""The accuracy grids keep the protocol: matched trainable counts, three seeds, a rate sweep where they say so."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

import randlora
from bench.spec import grid as matrix
from bench.tools import budget
from bench.spec.tasks import vit

H200_GRIDS = {  # swept: 3-4 rates x 3 seeds
    "accuracy-h200": 27, "accuracy-h200-text": 27, "accuracy-h200-all": 252, "accuracy-h200-head": 144,
}  # fmt: skip
MATCHED_GRIDS = (*H200_GRIDS, "accuracy-h200-probe")


def _adapter_count(cell) -> int | None:
    if cell.method.name not in ("lora", "randlora"):
        return None
    shapes = budget.target_shapes(cell.model, cell.targets)
    count = budget.lora_params if cell.method.name == "lora" else budget.randlora_params
    return count(shapes, cell.method.kwargs["r"])


@pytest.mark.parametrize("name", MATCHED_GRIDS)
def test_the_h200_grids_match_lora_and_randlora_counts_within_two_percent(name):
    grid = matrix.load(name)
    counts = defaultdict(dict)
    for cell in grid.cells:
        count = _adapter_count(cell)
        if count is not None:
            counts[(cell.task, cell.model)].setdefault(cell.method.name, set()).add(count)
    assert counts
    for setting, by_method in counts.items():
        (lora,), (rand,) = by_method["lora"], by_method["randlora"]
        assert abs(rand / lora - 1) < 0.02, (setting, lora, rand)


@pytest.mark.parametrize("name", sorted(H200_GRIDS))
def test_every_configuration_sweeps_at_least_three_rates_with_three_seeds_each(name):
    grid = matrix.load(name)
    assert len(grid.cells) == H200_GRIDS[name]
    seeds, rates = defaultdict(set), defaultdict(set)
    for cell in grid.cells:
        configuration = (cell.task, cell.model, cell.method)
        seeds[configuration + (cell.lr,)].add(cell.seed)
        rates[configuration].add(cell.lr)
    assert all(s == {0, 1, 2} for s in seeds.values())
    assert all(len(r) >= 3 for r in rates.values()), rates


def test_the_budget_formulas_are_the_counts_the_library_trains():
    import transformers

    torch.manual_seed(0)
    shapes = budget.target_shapes("vit-fmnist")
    assert len(shapes) == 24  # q, k, v, attention output, intermediate, output in 4 layers
    for config, formula in (
        (randlora.LoRAConfig(r=4, alpha=8, target_modules=("all-linear",), trainable_modules=("classifier",)),
         budget.lora_params(shapes, 4)),
        (randlora.RandLoRAConfig(r=12, alpha=48, target_modules=("all-linear",), trainable_modules=("classifier",)),
         budget.randlora_params(shapes, 12)),
    ):  # fmt: skip
        model = transformers.ViTForImageClassification(transformers.ViTConfig(**vit.CONFIG))
        head = sum(p.numel() for p in model.classifier.parameters())
        assert randlora.count_trainable(randlora.adapt(model, config)) == formula + head


def test_matched_ranks_are_the_closest_counts():
    shapes = budget.target_shapes("minilm-l6")
    assert budget.matched_randlora_rank(shapes, 8) == 17
    assert budget.lora_params(shapes, 8) == 331_776 and budget.randlora_params(shapes, 17) == 332_028


def test_the_head_grid_trains_every_head_at_one_rate_whatever_the_method():
    cells = matrix.load("accuracy-h200-head").cells
    assert {cell.head_lr for cell in cells} == {3e-3}
    assert {cell.method.name for cell in cells} == {"lora", "randlora", "full"}
    assert all(cell.trainable_modules for cell in cells)
