"""Adapter checkpoints: the trainable tensors and the config in one safetensors file, never the bases.

RandLoRA's bases are regenerated from the config's seed when the adapter is loaded, so a file holds λ and γ
(plus any `trainable_modules`) and is about the size of the trainable parameters.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import AdapterConfig
from .errors import ConfigError
from .model import adapt, adapter_config, trainable_parameters

FORMAT = "randlora-adapter/1"


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the trainable tensors and the config to `path` (atomically: a temporary file, then a rename)."""
    config = adapter_config(model)
    tensors = {name: p.detach().contiguous().cpu() for name, p in trainable_parameters(model).items()}
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict())}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_adapter_config(path: str | os.PathLike) -> AdapterConfig:
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an adapter file of this library (format {metadata.get('format')!r}, expected {FORMAT!r}).")
    return AdapterConfig.from_dict(json.loads(metadata["config"]))


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an adapter file into `model`: a fresh model is adapted with the stored config first.

    Every trainable tensor of the adapted model must be in the file with the same shape, and nothing more.
    """
    config = read_adapter_config(path)
    if getattr(model, "adapter_config", None) is None:
        adapt(model, config)
    elif adapter_config(model) != config:
        raise ConfigError(f"model is adapted with {adapter_config(model)} but {path} holds an adapter for {config}.")
    params = trainable_parameters(model)
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(set(params) - keys), sorted(keys - set(params))
        if missing or unexpected:
            raise ConfigError(
                f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                "load it into the architecture it was trained on."
            )
        with torch.no_grad():
            for name, p in params.items():
                t = f.get_tensor(name)
                if t.shape != p.shape:
                    raise ConfigError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the model needs {tuple(p.shape)}.")
                p.copy_(t.to(device=p.device, dtype=p.dtype))
    return model
