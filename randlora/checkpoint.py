"""Adapter checkpoints: the trainable tensors and the config in one safetensors file, never the bases.

RandLoRA's bases are regenerated from the config's seed when the adapter is loaded, so a file holds λ and γ
(plus any `trainable_modules`) and is about the size of the trainable parameters. Its metadata holds the config,
each adapted layer's shape (out, in) and, for RandLoRA, the bank's (d_max, D_max): λ (r, n) and γ (n, d) only
depend on d and r, so without those a file would load into another architecture with different bases.

`load_adapter` is all or nothing: it checks the whole file against the model first (config, layer shapes, bank,
every tensor's name, shape and dtype, then the values: NaN / Inf are refused) and only then adapts and copies.
Whenever it raises, the model is as it was. Files written before the layer shapes were recorded still load when
every tensor fits, with a warning that the architecture could not be verified (re-save them to record it).
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import AdapterConfig
from .errors import ConfigError
from .model import adapt, adapter_config, adapter_layers, planned_adapter, trainable_parameters

FORMAT = "randlora-adapter/1"
FLOAT_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _bank_shape(layers: dict[str, tuple]) -> list[int]:
    """(d_max, D_max) of the shared bases a RandLoRA model with these (out, in) layers generates."""
    return [max(min(shape) for shape in layers.values()), max(max(shape) for shape in layers.values())]


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write the trainable tensors, the config and the layer shapes to `path` (a temporary file, then a rename)."""
    config = adapter_config(model)
    tensors = {name: p.detach().contiguous().cpu() for name, p in trainable_parameters(model).items()}
    layers = {name: [layer.out_features, layer.in_features] for name, layer in adapter_layers(model)}
    metadata = {"format": FORMAT, "config": json.dumps(config.to_dict()), "layers": json.dumps(layers)}
    if config.method == "randlora":
        metadata["bank"] = json.dumps(_bank_shape(layers))
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


@dataclass(frozen=True)
class AdapterFile:
    """What a file's header says, read without loading a tensor: config, layer shapes, bank, {tensor: (shape, dtype)}."""

    path: str
    config: AdapterConfig
    layers: dict[str, tuple[int, int]] | None  # None in files written before the shapes were recorded
    bank: tuple[int, int] | None
    tensors: dict[str, tuple[tuple[int, ...], str]]


def _json_field(path, metadata: dict, key: str, kind: type):
    try:
        value = json.loads(metadata[key])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ConfigError(f"{path}: metadata field {key!r} is missing or not JSON; re-save the adapter.") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: metadata field {key!r} is a JSON {type(value).__name__}, expected a {kind.__name__}.")
    return value


def _shape_pair(path, key: str, value) -> tuple[int, int]:
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ConfigError(f"{path}: metadata {key} is {value!r}, expected [out, in] as two positive integers.")
    return tuple(value)


def read_adapter_file(path: str | os.PathLike) -> AdapterFile:
    """The header of an adapter file, checked for form; no tensor is loaded."""
    if not Path(path).is_file():
        raise ConfigError(f"{path} is not a file; pass the path of an adapter written by randlora.save_adapter.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    except SafetensorError as exc:
        raise ConfigError(f"{path} is not a safetensors file ({exc}); pass a file written by save_adapter.") from None
    if metadata.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an adapter file of this library (format {metadata.get('format')!r}, expected {FORMAT!r}).")
    config = AdapterConfig.from_dict(_json_field(path, metadata, "config", dict))
    layers = bank = None
    if "layers" in metadata:
        raw = _json_field(path, metadata, "layers", dict)
        layers = {name: _shape_pair(path, f"layers[{name!r}]", v) for name, v in raw.items()}
    if "bank" in metadata:
        bank = _shape_pair(path, "bank", _json_field(path, metadata, "bank", list))
    return AdapterFile(str(path), config, layers, bank, tensors)


def read_adapter_config(path: str | os.PathLike) -> AdapterConfig:
    return read_adapter_file(path).config


def _check_fit(file: AdapterFile, layers: dict[str, tuple], trainables: dict[str, tuple]) -> None:
    """ConfigError unless the file's layers, bank and tensors are exactly what the model needs."""
    path = file.path
    if file.layers is not None:
        for name in sorted(set(file.layers) | set(layers)):
            if file.layers.get(name) != layers.get(name):
                raise ConfigError(
                    f"{path} was saved for layer {name!r} of shape (out, in) {file.layers.get(name)} but this model's "
                    f"is {layers.get(name)}; load it into the architecture it was trained on."
                )
    if file.bank is not None and layers and file.bank != tuple(_bank_shape(layers)):
        raise ConfigError(f"{path} was saved with bases of (d_max, D_max) {file.bank} but this model needs "
                          f"{tuple(_bank_shape(layers))}; load it into the architecture it was trained on.")
    missing, unexpected = sorted(set(trainables) - set(file.tensors)), sorted(set(file.tensors) - set(trainables))
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                          "load it into the architecture it was trained on.")
    for name, (shape, dtype) in file.tensors.items():
        if shape != tuple(trainables[name]):
            raise ConfigError(f"{path}: tensor {name!r} has shape {shape}, the model needs {tuple(trainables[name])}.")
        if dtype not in FLOAT_DTYPES:
            raise ConfigError(f"{path}: tensor {name!r} is {dtype}; adapter tensors must be floating point "
                              f"({', '.join(FLOAT_DTYPES)}).")
    if file.layers is None:
        warnings.warn(f"{path} was written before adapter files recorded layer shapes: its tensors fit, but the "
                      "architecture cannot be verified; re-save it with randlora.save_adapter.", stacklevel=3)


def _load_finite(file: AdapterFile) -> dict[str, torch.Tensor]:
    """Every tensor of the file on the CPU, after its header passed `_check_fit`; NaN / Inf are refused."""
    try:
        with safe_open(file.path, framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in file.tensors}
    except SafetensorError as exc:
        raise ConfigError(f"{file.path} is damaged ({exc}); re-save the adapter.") from None
    for name, t in tensors.items():
        if not torch.isfinite(t).all():
            raise ConfigError(f"{file.path}: tensor {name!r} holds NaN or Inf values; load a file from a finite run.")
    return tensors


def load_adapter(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an adapter file into `model`: a fresh model is adapted with the stored config first.

    Every trainable tensor of the adapted model must be in the file with the same shape, and nothing more; the
    layer shapes and bases must match too. All of it is checked before the model is touched, so a refused file
    leaves the model as it was. A merged model is unmerged, loaded and merged again. Tensors stored in another
    float dtype than the parameter's are converted, with a warning that says which.
    """
    file = read_adapter_file(path)
    if getattr(model, "adapter_config", None) is None:
        layers, trainables = planned_adapter(model, file.config)
    elif adapter_config(model) != file.config:
        raise ConfigError(f"model is adapted with {adapter_config(model)} but {path} holds an adapter for {file.config}.")
    else:
        layers = {name: (m.out_features, m.in_features) for name, m in adapter_layers(model)}
        trainables = {name: tuple(p.shape) for name, p in trainable_parameters(model).items()}
    _check_fit(file, layers, trainables)
    tensors = _load_finite(file)
    if getattr(model, "adapter_config", None) is None:
        adapt(model, file.config)
    _copy_into(model, tensors, str(path))
    return model


@torch.no_grad()
def _copy_into(model: nn.Module, tensors: dict[str, torch.Tensor], path: str) -> None:
    """Copy checked tensors into the trainables; merged layers are unmerged first and merged again after."""
    merged = [layer for _, layer in adapter_layers(model) if layer.merged]
    for layer in merged:
        layer.unmerge()
    converted = set()
    for name, p in trainable_parameters(model).items():
        t = tensors[name]
        if t.dtype != p.dtype:
            converted.add(f"{t.dtype} -> {p.dtype}".replace("torch.", ""))
        p.copy_(t.to(device=p.device, dtype=p.dtype))
    for layer in merged:
        layer.merge()
    if converted:
        warnings.warn(f"{path}: tensors converted {', '.join(sorted(converted))} to the model's parameter dtypes.",
                      stacklevel=3)
