"""A cell of N ranks built on the meta device, so that no rank ever holds more than its shard of the model.

    build(model)        the architecture on the meta device: shapes only, no memory, no initialisation
    adapt               as every cell (bench.spec.methods): λ, γ (or LoRA's A, B) on the meta device too; the
                        RandLoRA bases are plain CPU tensors, generated from the seed as on one GPU
    fully_shard         bench.worker.distributed.shard, the same as the eager path
    materialise         to_empty on the rank's device (its shard of every parameter, uninitialised), then
                          a preset: random weights with the statistics of the preset's eager build (the model's own
                                    `_init_weights`: N(0, initializer_range) for linear and embedding weights, ones
                                    for norms), drawn into each shard
                          hf:<folder>: each rank reads only its rows of every tensor from the safetensors files
                        then the buffers (RoPE's inverse frequencies) as the model computes them, and the adapters
                        as fresh (`Method.init_adapters`: RandLoRA λ = 0, γ = 1/d; LoRA A Kaiming, B = 0)

The RandLoRA bases never touch the meta device nor any random generator but their own `torch.Generator(seed)`,
so every rank holds the same ones; `distributed.check_replicated` still proves it after materialising.

Random draws into shards: on CUDA, DTensor's random ops give each shard its own offset of one stream (seeded from
rank 0), so the shards are as independent as the rows of one tensor. On a CPU mesh DTensor has no such tracker and
draws the local shard from the process's generator; each rank is seeded with `seed · world_size + rank` first, or
every rank would draw the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.core.errors import BenchError
from bench.spec import presets


@dataclass
class MetaModel:
    """A model built on the meta device and what materialising it needs."""

    model: nn.Module
    info: presets.ModelInfo
    folder: Path | None  # safetensors to load per shard; None: random weights like the preset's eager build
    init_weights: Callable[[nn.Module], None]  # the transformers model's own per-module initialisation
    names: dict[int, str]  # id(parameter) -> its name before adapting (the checkpoint's key)

    def checkpoint_keys(self, adapted: nn.Module) -> dict[str, str]:
        """{parameter name in the adapted model: its checkpoint key}, for the parameters the model was built with
        (adapting wraps them, `q_proj.weight` -> `q_proj.base.weight`, but keeps the same tensors). Call it before
        fully_shard, which replaces the tensors and keeps the names."""
        return {name: self.names[id(p)] for name, p in adapted.named_parameters() if id(p) in self.names}


def build(model: str, dtype: torch.dtype, trust_remote_code: bool = False) -> MetaModel:
    """`model` (a preset or hf:<folder or cached hub id>) on the meta device, parameters in `dtype`."""
    import transformers

    folder = None
    if presets.is_hf(model):
        folder = _local_folder(model[len(presets.HF_PREFIX) :])
        config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with torch.device("meta"), presets.default_dtype(dtype):
            net = transformers.AutoModelForCausalLM.from_config(
                config, attn_implementation="sdpa", trust_remote_code=trust_remote_code
            )
        info = presets.model_info(net.config, "causal-lm", "tokens")
    else:
        net, info = presets.build(model, dtype, torch.device("meta"), trust_remote_code)
    names = {id(p): name for name, p in net.named_parameters()}
    return MetaModel(net, info, folder, net._init_weights, names)


def _local_folder(path: str) -> Path:
    """The folder of an hf: model: a path, or a hub id already in the local cache (ranks do not download)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, local_files_only=True, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # noqa: BLE001 (any failure here means the same thing to the user)
        raise BenchError(
            f"hf:{path} is neither a folder nor a hub id in the local cache; a cell of several GPUs loads "
            f"safetensors shard by shard from a folder (download it first: huggingface-cli download {path})."
        ) from exc


def materialise(
    meta: MetaModel,
    model: nn.Module,
    keys: dict[str, str],
    device: torch.device,
    init_adapters: Callable[[nn.Module], None],
    seed: int,
) -> None:
    """Give the sharded `model` (adapted from `meta.model`, then fully_shard) its storage on `device` and its
    values: this rank's rows of every parameter (checkpoint `keys` from `meta.checkpoint_keys`), the buffers, and
    fresh adapters."""
    import torch.distributed as dist

    model.to_empty(device=device)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with torch.no_grad():
        if meta.folder is None:
            torch.manual_seed(seed * world_size + rank)
            model.apply(meta.init_weights)
        else:
            load_shards(model, meta.folder, keys)
            for module in model.modules():  # recompute what no checkpoint holds (RoPE's inv_freq)
                if next(module.buffers(recurse=False), None) is not None:
                    meta.init_weights(module)
    torch.manual_seed(seed)  # the rest of the cell draws as the eager path does
    init_adapters(model)


def local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """(this rank's local tensor, start, stop): the rows [start, stop) of the full tensor that it holds.
    FSDP2 shards dimension 0 as torch.chunk does: ceil(n / world_size) rows a rank, the last ranks fewer or none."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return param.data, 0, param.shape[0]
    local = param.to_local()
    (placement,) = param.placements
    if isinstance(placement, Replicate):
        return local, 0, param.shape[0]
    if not (isinstance(placement, Shard) and placement.dim == 0):
        raise BenchError(f"a parameter is placed as {placement}; loading per shard knows Shard(0) and Replicate only.")
    n, world_size = param.shape[0], param.device_mesh.size()
    chunk = math.ceil(n / world_size)
    start = min(n, param.device_mesh.get_local_rank() * chunk)
    stop = min(n, start + chunk)
    if local.shape[0] != stop - start:
        raise RuntimeError(f"FSDP2 gave this rank {local.shape[0]} rows of {n}; torch.chunk's rule says {stop - start}")
    return local, start, stop


def copy_rows(param: torch.Tensor, read: Callable[[int, int], torch.Tensor]) -> None:
    """Fill this rank's part of `param` with `read(start, stop)`, rows [start, stop) of the full tensor."""
    local, start, stop = local_rows(param)
    if stop > start:
        local.copy_(read(start, stop))


def load_shards(model: nn.Module, folder: Path, keys: dict[str, str]) -> None:
    """Each parameter of `model` (FSDP2-sharded) gets its rows from the safetensors files of `folder`, where its
    key is `keys[parameter name]`; only those rows are read. BenchError naming the first key no file holds."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BenchError(f"{folder} holds no *.safetensors file; save the model with save_pretrained first.")
    handles = [safe_open(str(path), framework="pt", device="cpu") for path in files]
    where = {key: handle for handle in handles for key in handle.keys()}
    for name, param in model.named_parameters():
        if name not in keys:
            continue  # an adapter's parameter: initialised fresh
        key = keys[name]
        if key not in where:
            raise BenchError(f"no safetensors file in {folder} holds {key!r} (the model's {name!r})")
        tensor = where[key].get_slice(key)
        copy_rows(param, lambda start, stop: tensor[start:stop])
