"""The rank an update ΔW (out, in) can reach, per method, and the number of bases that fits a parameter budget.

With d = min(in, out):
    RandLoRA   rank ΔW <= min(d, n·r), n = num_bases(d, r, n_bases): n bases of rank r, one shared A (r, d)
    LoRA       rank ΔW <= min(d, r)
    full       rank ΔW <= d
These are the ranks the update reaches for generic bases (Gaussian or uniform reach them with probability 1, the
paper's §4.3). Ternary bases can fall short: every all-zero column of the shared A costs one rank (bases.py).

A RandLoRA layer trains n·(r + d) parameters. Since d ≫ r, a fixed n keeps the count almost fixed while r sets the
rank: for the paper's equal-parameter ablation (its Table 2) pick n once with `n_bases_for_budget` and vary r.
E.g. d = 768, n = 6: r = 8 gives rank 48 with 4,656 parameters, r = 128 gives full rank 768 with 5,376.
"""
from __future__ import annotations

from torch import nn

from .bases import num_bases
from .config import AdapterConfig, LoRAConfig, RandLoRAConfig
from .errors import ConfigError
from .layouts import features, is_linear
from .model import adapter_config, adapter_layers


def update_rank(config: AdapterConfig, out_features: int, in_features: int) -> int:
    """The largest rank ΔW of an (out_features, in_features) layer can reach under `config`."""
    d = min(out_features, in_features)
    if isinstance(config, RandLoRAConfig):
        return min(d, num_bases(d, config.r, config.n_bases) * config.r)
    if isinstance(config, LoRAConfig):
        return min(d, config.r)
    return d


def update_ranks(model: nn.Module) -> dict[str, int]:
    """{layer name: update_rank} over the adapted layers (every linear layer for full fine-tuning)."""
    config = adapter_config(model)
    if config.method == "full":
        return {name: update_rank(config, *features(m)) for name, m in model.named_modules() if is_linear(m)}
    return {name: update_rank(config, m.out_features, m.in_features) for name, m in adapter_layers(model)}


def update_rank_of(model: nn.Module) -> int:
    """The largest update rank over the model's adapted layers (0 if it has no linear layer): a results column."""
    return max(update_ranks(model).values(), default=0)


def n_bases_for_budget(trainable_per_layer: int, r: int, out_features: int, in_features: int) -> int:
    """The most bases n with n·(r + d) <= trainable_per_layer for an (out, in) layer (at least 1)."""
    if trainable_per_layer <= 0 or r <= 0:
        raise ConfigError(f"trainable_per_layer is {trainable_per_layer} and r is {r}; both must be positive.")
    d = min(out_features, in_features)
    return max(1, min(trainable_per_layer // (r + d), num_bases(d, r)))
