"""A cell's model known before anything runs: its config, and its modules built on the meta device.

`grid.load` calls `check` on every grid it reads, so `--dry-run` and a real run refuse the same things: each
cell's `targets` and `trainable_modules` must select modules of its model, which is built from its config on the
meta device (no weights, no memory, no init) once per model per process, so a large grid's check stays fast.
An `hf:` model's config is read from its folder or the hub: only from local files while `HF_HUB_OFFLINE` is set,
with `trust_remote_code` only where the grid asked for it. Models a task builds itself are its own to check.
"""

from __future__ import annotations

import functools

from bench.core.errors import BenchError
from bench.spec import methods, presets

SHOWN_NAMES = 8  # module names a refusal lists, so the sentence stays one line


def _clause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200].rstrip(".")


@functools.cache
def _read_config(model: str, trust_remote_code: bool):
    """(config, None), or (None, the clause saying why not): a failure is cached too, so an unreachable hub is
    asked once per process (each try waits through huggingface_hub's retries)."""
    import huggingface_hub.constants
    import transformers

    offline = bool(huggingface_hub.constants.HF_HUB_OFFLINE)
    try:
        path = model[len(presets.HF_PREFIX) :]
        return transformers.AutoConfig.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=offline
        ), None
    except (OSError, ValueError, KeyError, ImportError) as exc:  # no such folder or repo, offline, unknown type
        said = " (HF_HUB_OFFLINE is set, so only local files are read)" if offline else ""
        return None, (
            f"model {model!r} has no readable transformers config{said}: {_clause(exc)}; give a local folder "
            "written by save_pretrained, or a hub id that is cached or reachable"
        )


def hf_config(model: str, trust_remote_code: bool):
    """The transformers config of an `hf:` model; ValueError (a clause naming the model) when it cannot be read."""
    config, why_not = _read_config(model, trust_remote_code)
    if config is None:
        raise ValueError(why_not)
    return config


def model_type(model: str, trust_remote_code: bool) -> str | None:
    """An `hf:` model's `model_type` ('gpt2', 'llama', ...), None when its config cannot be read (`check` says so)."""
    try:
        return hf_config(model, trust_remote_code).model_type
    except ValueError:
        return None


@functools.cache
def meta_model(model: str, trust_remote_code: bool):
    """The model of a preset or an `hf:` causal LM, built on the meta device; ValueError (a clause) if it cannot be."""
    preset = presets.lookup(model)
    if preset is not None:
        return presets.meta_model(preset)
    import torch
    import transformers

    config = hf_config(model, trust_remote_code)
    try:
        with torch.device("meta"):
            return transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, ImportError) as exc:
        raise ValueError(
            f"model {model!r} is not a causal language model transformers can build ({_clause(exc)}); "
            "hf: models must load with AutoModelForCausalLM"
        ) from None


def _linear_names(net) -> list[str]:
    from randlora.layouts import is_linear

    return sorted({name.rsplit(".", 1)[-1] for name, m in net.named_modules() if name and is_linear(m)})


def check_cell_modules(model: str, trust_remote_code: bool, targets: tuple, trainable: tuple) -> None:
    """ValueError, one clause naming the model, the pattern(s) and modules that exist, when the selection fails."""
    from randlora import ConfigError

    net = meta_model(model, trust_remote_code)
    missing = []
    for pattern in targets:
        try:
            methods.resolve_modules(net, (pattern,), "targets", linear_only=True, exclude=trainable)
        except ConfigError as exc:
            if "matches no module" not in str(exc):
                raise ValueError(f"model {model!r}: {str(exc).rstrip('.')}") from None
            missing.append(pattern)
    if missing:
        names = _linear_names(net)
        shown = ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
        raise ValueError(
            f"targets {', '.join(map(repr, missing))} match no module of model {model!r} (a {type(net).__name__}), "
            f"whose linear layers are named {shown or 'nothing'}; set targets to some of those, or to 'all-linear'"
        )
    for pattern in trainable:
        try:
            methods.resolve_modules(net, (pattern,), "trainable_modules", linear_only=False)
        except ConfigError as exc:
            raise ValueError(f"model {model!r}: {str(exc).rstrip('.')}") from None


def _at_defaults(cell) -> bool:
    """Whether the cell selects its preset's default modules, or none (full fine-tuning has no targets)."""
    targets, trainable = presets.default_modules(cell.model)
    return tuple(cell.targets) in ((), tuple(targets)) and tuple(cell.trainable_modules) in ((), tuple(trainable))


def check(cells, source: str) -> None:
    """BenchError (exit 2) naming `source` when a cell's model cannot be built or its module patterns select
    nothing there; each distinct (model, targets, trainable_modules) is checked once."""
    seen = set()
    for cell in cells:
        if not (presets.is_hf(cell.model) or cell.model in presets.PRESETS):
            continue  # a task's own model
        if cell.model in presets.PRESETS and _at_defaults(cell):
            continue  # a preset's own defaults select its modules by construction (tests hold every preset to it),
            # and a grid of them should not pay transformers' import to be told so
        key = (cell.model, cell.trust_remote_code, cell.targets, cell.trainable_modules)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_cell_modules(*key)
        except ValueError as exc:
            raise BenchError(f"{source}: {exc}.") from None
