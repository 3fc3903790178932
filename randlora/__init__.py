"""RandLoRA: full-rank parameter-efficient fine-tuning from shared random bases (Albert et al., ICLR 2025).

    import randlora
    model = randlora.adapt(model, randlora.RandLoRAConfig(r=32, target_modules=["q_proj", "v_proj"]))
    ...train...
    randlora.save_adapter(model, "adapter.safetensors")

The same `adapt` takes a `LoRAConfig` or a `FullFinetuneConfig`; RandLoRA's variants are chosen by `impl`
("eager", "compiled", "sparse", "semi_structured"). `accumulation_window(model)` spans one optimizer step's
micro-batches (RandLoRA layers with accumulate="window" build W0 + ΔW once in it). `update_rank(config, out, in)`
is the rank ΔW can reach; `n_bases` in a RandLoRAConfig caps the bases per layer, so that rank can be varied at an
almost fixed parameter count.
"""
from .accumulation import accumulation_window
from .checkpoint import load_adapter, read_adapter_config, save_adapter
from .config import LLAMA_PROJECTIONS, AdapterConfig, FullFinetuneConfig, LoRAConfig, RandLoRAConfig
from .errors import ConfigError
from .peft_export import export_to_peft
from .model import (
    adapt,
    adapter_config,
    adapter_layers,
    count_trainable,
    disable_adapters,
    enable_adapters,
    init_adapters,
    merge,
    trainable_parameters,
    unmerge,
)
from .rank import n_bases_for_budget, update_rank, update_rank_of, update_ranks
from .registry import implementations
from .targets import ALL_LINEAR, select_modules

__all__ = [
    "ALL_LINEAR",
    "AdapterConfig",
    "ConfigError",
    "FullFinetuneConfig",
    "LLAMA_PROJECTIONS",
    "LoRAConfig",
    "RandLoRAConfig",
    "accumulation_window",
    "adapt",
    "adapter_config",
    "adapter_layers",
    "count_trainable",
    "disable_adapters",
    "enable_adapters",
    "export_to_peft",
    "implementations",
    "init_adapters",
    "load_adapter",
    "merge",
    "n_bases_for_budget",
    "read_adapter_config",
    "save_adapter",
    "select_modules",
    "trainable_parameters",
    "unmerge",
    "update_rank",
    "update_rank_of",
    "update_ranks",
]
