"""The one entry point, `adapt(model, config)`, and what can be done with an adapted model."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from . import layers  # noqa: F401  (registers the implementations)
from .config import AdapterConfig
from .errors import ConfigError
from .layers.base import AdapterLinear
from .registry import lookup
from .targets import select_modules

CONFIG_ATTR = "adapter_config"


def adapt(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Adapt `model` in place and return it, with exactly the adapter parameters (and `trainable_modules`) trainable.

    The implementation is looked up from `(config.method, config.impl)`; targets are the `nn.Linear` modules
    selected by `config.target_modules` (full fine-tuning ignores them and trains everything).
    """
    if not isinstance(config, AdapterConfig):
        raise ConfigError(f"config is a {type(config).__name__}; pass a RandLoRAConfig, LoRAConfig or FullFinetuneConfig.")
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise ConfigError("model is already adapted; adapt a fresh model, or load an adapter into this one.")
    impl = lookup(config.method, config.impl)
    targets = {}
    if config.target_modules and config.method != "full":
        targets = select_modules(
            model, config.target_modules, "target_modules", linear_only=True, exclude=config.trainable_modules
        )
    extra = select_modules(model, config.trainable_modules, "trainable_modules", linear_only=False)
    for p in model.parameters():
        p.requires_grad_(False)
    impl.adapt_model(model, config, targets)
    for module in extra.values():
        for p in module.parameters():
            p.requires_grad_(True)
    object.__setattr__(model, CONFIG_ATTR, config)
    return model


def adapter_config(model: nn.Module) -> AdapterConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise ConfigError("model is not adapted; call randlora.adapt(model, config) first.")
    return config


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            yield name, module


def merge(model: nn.Module) -> None:
    """Fold ΔW into each frozen weight (forward then runs at the base model's cost)."""
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    for _, layer in adapter_layers(model):
        layer.unmerge()


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Disabled adapters make the model compute its base function (merged weights are unmerged first)."""
    config = adapter_config(model)
    if not getattr(lookup(config.method, config.impl), "supports_disable", True):
        raise ConfigError(f"method {config.method!r} has no adapter to disable; use 'lora' or 'randlora'.")
    for _, layer in adapter_layers(model):
        layer.set_enabled(enabled)


def enable_adapters(model: nn.Module) -> None:
    set_adapters_enabled(model, True)


def disable_adapters(model: nn.Module) -> None:
    set_adapters_enabled(model, False)


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model).values())
