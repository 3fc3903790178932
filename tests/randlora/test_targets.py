"""Target selection: "all-linear" leaves out the output layer, the modules trained in full, and what is inside them."""
from __future__ import annotations

import torch
from torch import nn

import randlora
from randlora.layers.base import AdapterLinear


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6))
        self.pooler = nn.Sequential(nn.Linear(6, 6))  # a container whose Linear is pooler.0
        self.classifier = nn.Linear(6, 3)

    def forward(self, x):
        return self.classifier(self.pooler(self.encoder(x)))


def _adapted(config) -> set[str]:
    model = randlora.adapt(_Net(), config)
    return {name for name, m in model.named_modules() if isinstance(m, AdapterLinear)}


def test_all_linear_leaves_out_modules_trained_in_full_and_the_linears_inside_them():
    config = randlora.RandLoRAConfig(r=2, target_modules="all-linear", trainable_modules=("pooler", "classifier"))
    assert _adapted(config) == {"encoder.0", "encoder.2"}
    model = randlora.adapt(_Net(), config)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert {"pooler.0.weight", "pooler.0.bias", "classifier.weight"} <= trainable
    assert not any(name.startswith("encoder.") and "randlora" not in name for name in trainable)


def test_all_linear_without_exclusions_takes_every_linear():
    torch.manual_seed(0)
    assert _adapted(randlora.RandLoRAConfig(r=2, target_modules="all-linear")) == {
        "encoder.0", "encoder.2", "pooler.0", "classifier"
    }
