"""Full fine-tuning as a method of the same interface: nothing is wrapped, every parameter trains."""
from __future__ import annotations

from torch import nn

from ..registry import register


@register("full", "eager")
class FullFinetune:
    """Holds no layer; `adapt` unfreezes the whole model. Merge / unmerge are no-ops; there is nothing to disable."""

    supports_disable = False

    @classmethod
    def adapt_model(cls, model: nn.Module, config, targets: dict) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
