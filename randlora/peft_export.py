"""Export a RandLoRA adapter to peft's RandLora format, so `PeftModel.from_pretrained` can load it.

peft regenerates its bases with its own generator, so the export saves ours (`save_projection=True`), in the
shapes peft expects: A (r, 1, min_dim) and B (max_dim, n, r), where (max_dim, min_dim) come from the
element-wise largest (out, in) over the targets. Our bases fill the leading corner and the rest is zero, which
no layer reads. λ (r, n) and γ (n, d) are stored as peft stores them; the k-major pairing of `functional.py`
is peft's, so the loaded model computes the same ΔW.

Size: peft's format holds one copy of the shared bases PER LAYER (plus one for the model), each of
(r·min_dim + max_dim·n·r) float32 values, so the export is far larger than `save_adapter`'s file: in one measured
case 1.43 GB for 262,400 trainable parameters (about 1 MB of λ and γ). Keep `save_adapter` files for checkpoints;
export only to hand an adapter to peft.

Layers stored transposed (transformers' `Conv1D`, GPT-2) export with peft's `fan_in_fan_out=True`; peft takes that
flag for the whole model, so a model mixing `Conv1D` and `nn.Linear` targets cannot be exported and is refused.

peft gives every layer n = ceil(d / r) bases; an adapter whose `n_bases` caps any layer below that cannot be
expressed there, and its export is refused.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .bases import num_bases
from .config import RandLoRAConfig
from .errors import ConfigError
from .layouts import layout_of
from .model import adapter_config, adapter_layers


def _peft_bases(layers, config: RandLoRAConfig) -> tuple[torch.Tensor, torch.Tensor]:
    bank = layers[0][1].bank
    largest_out = max(layer.out_features for _, layer in layers)
    largest_in = max(layer.in_features for _, layer in layers)
    max_dim, min_dim = max(largest_out, largest_in), min(largest_out, largest_in)
    n = num_bases(min_dim, config.r)
    A = torch.zeros(config.r, 1, min_dim)
    A[:, 0, : bank.d_max] = bank.A
    B = torch.zeros(max_dim, n, config.r)
    B.view(max_dim, n * config.r)[: bank.D_max, : bank.B.shape[1]] = bank.B
    return A, B


def _fan_in_fan_out(layers) -> bool:
    """peft's fan_in_fan_out: whether the targets store their weights (in, out); refused when they differ."""
    kinds = {layout_of(layer.base) for _, layer in layers}
    if len(kinds) > 1:
        names = " and ".join(sorted(k.name for k in kinds))
        raise ConfigError(
            f"the adapter wraps both {names} layers, and peft's RandLora takes one weight layout (fan_in_fan_out) for "
            "the whole model; export an adapter whose targets are all of one type."
        )
    return kinds.pop().transposed


def export_to_peft(model: torch.nn.Module, out_dir: str | os.PathLike) -> Path:
    """Write `adapter_config.json` and `adapter_model.safetensors` for peft's RandLora into `out_dir`.

    The safetensors file repeats the shared bases for every layer, as peft expects: it is about
    (layers + 1) · 4 · (r·min_dim + max_dim·n·r) bytes (1.43 GB for 262,400 trainables in one measured case),
    not the size of the trainables. Refused for LoRA / full adapters, trainable_modules and a capping n_bases.
    """
    config = adapter_config(model)
    if not isinstance(config, RandLoRAConfig):
        raise ConfigError(f"only RandLoRA adapters export to peft's RandLora; this model holds a {config.method!r} adapter.")
    if config.trainable_modules:
        raise ConfigError("trainable_modules cannot be exported to peft's RandLora yet; export an adapter without them.")
    capped = [name for name, layer in adapter_layers(model) if layer.num_bases != num_bases(layer.d, config.r)]
    if capped:
        raise ConfigError(
            f"n_bases={config.n_bases} gives layer {capped[0]!r} fewer bases than peft's ceil(d / r); peft's RandLora "
            "cannot express that, so export an adapter with n_bases=None (or large enough for every layer)."
        )
    try:
        import peft
    except ImportError:
        raise ConfigError("exporting to peft needs peft installed: pip install 'randlora-bench[peft]'.") from None
    layers = list(adapter_layers(model))
    fan_in_fan_out = _fan_in_fan_out(layers)
    A, B = _peft_bases(layers, config)
    tensors = {"base_model.randlora_A": A, "base_model.randlora_B": B}
    for name, layer in layers:
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.randlora_lambda"] = layer.randlora_lambda.detach().float().cpu().contiguous()
        tensors[f"{prefix}.randlora_gamma"] = layer.randlora_gamma.detach().float().cpu().contiguous()
        tensors[f"{prefix}.randlora_A"] = A
        tensors[f"{prefix}.randlora_B"] = B
    peft_config = peft.RandLoraConfig(
        r=config.r,
        randlora_alpha=config.alpha,
        randlora_dropout=config.dropout,
        target_modules=[name for name, _ in layers],
        projection_prng_key=config.seed,
        save_projection=True,
        fan_in_fan_out=fan_in_fan_out,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_config.save_pretrained(str(out))
    save_file({k: v.clone() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"))
    return out
