"""The one entry point, `adapt(model, config)`, and what can be done with an adapted model."""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from . import layers  # noqa: F401  (registers the implementations)
from .config import AdapterConfig
from .errors import ConfigError
from .layers.base import AdapterLinear
from .layouts import features
from .registry import lookup
from .targets import select_modules

CONFIG_ATTR = "adapter_config"


def _selection(model: nn.Module, config: AdapterConfig) -> tuple[type, dict[str, nn.Module], dict[str, nn.Module]]:
    """(implementation, targets, trainable_modules) of `config` on `model`; ConfigError when they do not fit."""
    if not isinstance(config, AdapterConfig):
        raise ConfigError(f"config is a {type(config).__name__}; pass a RandLoRAConfig, LoRAConfig or FullFinetuneConfig.")
    impl = lookup(config.method, config.impl)
    targets = {}
    if config.target_modules and config.method != "full":
        targets = select_modules(
            model, config.target_modules, "target_modules", linear_only=True, exclude=config.trainable_modules
        )
    extra = select_modules(model, config.trainable_modules, "trainable_modules", linear_only=False)
    return impl, targets, extra


def adapt(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Adapt `model` in place and return it, with exactly the adapter parameters (and `trainable_modules`) trainable.

    The implementation is looked up from `(config.method, config.impl)`; targets are the linear layers
    (`nn.Linear` or transformers' `Conv1D`) selected by `config.target_modules` (full fine-tuning ignores them and
    trains everything).
    """
    if getattr(model, CONFIG_ATTR, None) is not None:
        raise ConfigError("model is already adapted; adapt a fresh model, or load an adapter into this one.")
    impl, targets, extra = _selection(model, config)
    for p in model.parameters():
        p.requires_grad_(False)
    impl.adapt_model(model, config, targets)
    for module in extra.values():
        for p in module.parameters():
            p.requires_grad_(True)
    object.__setattr__(model, CONFIG_ATTR, config)
    return model


def planned_adapter(model: nn.Module, config: AdapterConfig) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """What `adapt(model, config)` would make, computed without touching `model` or allocating anything:
    ({target name: (out, in)}, {trainable parameter name: shape}), the latter as `trainable_parameters` names them.
    """
    impl, targets, extra = _selection(model, config)
    layers = {name: features(m) for name, m in targets.items()}
    if config.method == "full":
        return layers, {name: tuple(p.shape) for name, p in model.named_parameters()}
    in_extra = {id(p) for module in extra.values() for p in module.parameters()}
    wrapped = {f"{t}.{leaf}": f"{t}.base.{leaf}" for t in targets for leaf in ("weight", "bias")}
    trainables = {wrapped.get(n, n): tuple(p.shape) for n, p in model.named_parameters() if id(p) in in_extra}
    for t, m in targets.items():
        for leaf, shape in impl.trainable_shapes(config, *features(m)).items():
            trainables[f"{t}.{leaf}"] = shape
    return layers, trainables


def adapter_config(model: nn.Module) -> AdapterConfig:
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise ConfigError("model is not adapted; call randlora.adapt(model, config) first.")
    return config


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdapterLinear):
            yield name, module


def _layers_of(model: nn.Module, action: str) -> list[AdapterLinear]:
    """The adapter layers `action` (merge, unmerge, disable, ...) works on; a ConfigError when there are none."""
    config = adapter_config(model)
    if not getattr(lookup(config.method, config.impl), "has_adapter", True):
        raise ConfigError(f"method {config.method!r} has no adapter to {action}; use 'lora' or 'randlora'.")
    return [layer for _, layer in adapter_layers(model)]


def merge(model: nn.Module, dequantize: bool = False) -> None:
    """Fold ΔW into each frozen weight (forward then runs at the base model's cost).

    Refused while the adapters are disabled: a disabled model must keep computing the base function, so call
    `enable_adapters` first. Merging a merged model does nothing. A quantised base (bitsandbytes 4-bit or int8)
    cannot take ΔW: merge is refused, before any layer changes, unless `dequantize=True`, which first replaces each
    quantised base by a float nn.Linear of its dequantised weight (the model then holds float weights there).
    """
    layers = _layers_of(model, "merge")
    if not all(layer.enabled for layer in layers):
        raise ConfigError("the model's adapters are disabled; call randlora.enable_adapters(model) before merge.")
    quantized = [layer for layer in layers if layer.quant is not None and not layer.merged]
    if quantized and not dequantize:
        raise ConfigError(
            f"{len(quantized)} adapted layers have a quantised base ({quantized[0].quant.name}), into which ΔW cannot "
            "be folded; call randlora.merge(model, dequantize=True) to merge into dequantised float weights."
        )
    for layer in quantized:
        layer.dequantize_base()
    for layer in layers:
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Subtract ΔW from each merged weight again (an unmerged layer is left as it is)."""
    for layer in _layers_of(model, "unmerge"):
        layer.unmerge()


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    """Disabled adapters make the model compute its base function (merged weights are unmerged first)."""
    for layer in _layers_of(model, "disable" if not enabled else "enable"):
        layer.set_enabled(enabled)


def init_adapters(model: nn.Module) -> None:
    """Initialise every adapter as fresh (ΔW = 0: RandLoRA λ = 0, γ = 1/d; LoRA A Kaiming, B = 0).

    For a model adapted on the meta device: `model.to_empty(device=...)` leaves the adapter's tensors
    uninitialised, so call this after it (and after loading the base weights). The shared bases need nothing:
    they live on the CPU and are regenerated from the seed.
    """
    for layer in _layers_of(model, "initialise"):
        layer.reset_parameters()


def enable_adapters(model: nn.Module) -> None:
    set_adapters_enabled(model, True)


def disable_adapters(model: nn.Module) -> None:
    set_adapters_enabled(model, False)


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in trainable_parameters(model).values())
