"""Full fine-tuning as a method of the same interface: nothing is wrapped, every parameter trains."""
from __future__ import annotations

from torch import nn

from ..registry import register


@register("full", "eager")
class FullFinetune:
    """Holds no layer; `adapt` unfreezes the whole model. There is no adapter to merge or disable."""

    has_adapter = False  # merge, unmerge, disable, enable and init_adapters are refused

    @classmethod
    def adapt_model(cls, model: nn.Module, config, targets: dict) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
