"""Registry of the methods a grid can name, each a function that adapts a model.

    full, lora, randlora      this project's `randlora.adapt`, parameters passed to its config classes
    peft-lora, peft-randlora  peft's LoraConfig / RandLoraConfig, the anchors users would pick instead
    peft-lora-liger           peft's LoRA on a model patched with Liger's Triton kernels (the speed-minded anchor)
    peft-vera                 peft's VeraConfig: VeRA, low-rank random bases with trained scalings (the paper's baseline)

Every method sees the same resolved targets (full module names, matched by `randlora`'s rules) and the same
`trainable` modules (a classification head), so the methods differ only in the adapter.
A method whose package is missing is reported as skipped by the runner, not as an error.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import randlora
from randlora import ConfigError


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    resolve: Callable[[dict], dict]  # params as written -> every param with its default; raises ConfigError
    adapt: Callable  # (model, params, targets, trainable) -> the model to train
    uses_targets: bool = True  # full fine-tuning trains everything and ignores the targets
    trains_base: bool = False  # full fine-tuning: the base's weights train, so they cannot be stored quantised
    requires: str | tuple[str, ...] | None = None  # packages that must be importable, else the cell is skipped
    needs_cuda: bool = False  # runs only on a CUDA device: a cell elsewhere is skipped by the worker
    # (model, dtype) -> the context of one optimizer step's micro-batches, where the method has one
    accumulation_window: Callable | None = None
    # After a meta-device build's to_empty (bench/worker/meta_build.py): the adapters as a fresh one starts;
    # None: the method cannot be built on the meta device (its frozen bases are buffers drawn while adapting)
    init_adapters: Callable | None = None

    def unavailable_reason(self) -> str | None:
        packages = (self.requires,) if isinstance(self.requires, str) else (self.requires or ())
        for package in packages:
            if importlib.util.find_spec(package) is None:
                return (
                    f"method {self.name!r} needs the {package!r} package, which is not installed "
                    f"(pip install {package})"
                )
        return None


METHODS: dict[str, Method] = {}


def register(name: str, description: str, resolve: Callable[[dict], dict], **options) -> Callable:
    def decorate(adapt: Callable) -> Callable:
        if name in METHODS:
            raise RuntimeError(f"method {name!r} registered twice")
        METHODS[name] = Method(name, description, resolve, adapt, **options)
        return adapt

    return decorate


# --- this project's methods ------------------------------------------------------------------------------------
_CELL_FIELDS = ("target_modules", "trainable_modules")


def _project_params(method: str) -> Callable[[dict], dict]:
    """Validate through the library's own config class, so the harness accepts exactly what `randlora` accepts."""

    def resolve(params: dict) -> dict:
        for name in _CELL_FIELDS:
            if name in params:
                raise ConfigError(
                    f"{name} is set per cell (the 'targets' / 'trainable_modules' fields), not per method."
                )
        resolved = randlora.AdapterConfig.from_dict({"method": method, **params}).to_dict()
        return {k: v for k, v in resolved.items() if k not in _CELL_FIELDS + ("method",)}

    return resolve


def _project_adapt(method: str) -> Callable:
    def adapt(model, params: dict, targets: tuple[str, ...], trainable: tuple[str, ...]):
        config = randlora.AdapterConfig.from_dict(
            {"method": method, **params, "target_modules": targets, "trainable_modules": trainable}
        )
        return randlora.adapt(model, config)

    return adapt


def _no_adapters(model) -> None:
    """Full fine-tuning has no adapter to initialise."""


for _name, _description, _options in (
    ("full", "full fine-tuning: every parameter trains",
     {"uses_targets": False, "trains_base": True, "init_adapters": _no_adapters}),
    ("lora", "this project's LoRA (r=16, alpha=32 by default)", {"init_adapters": randlora.init_adapters}),
    (
        "randlora",
        "this project's RandLoRA; impl eager | compiled | sparse, basis uniform | normal | sparse | very_sparse | "
        "sparse_2_4, accumulate micro_batch | window, keep_weight",
        {"accumulation_window": randlora.accumulation_window, "init_adapters": randlora.init_adapters},
    ),
):
    register(_name, _description, _project_params(_name), **_options)(_project_adapt(_name))


# --- peft's methods ---------------------------------------------------------------------------------------------
def _init_peft_lora(model) -> None:
    """peft's own initialisation of every LoRA adapter (A Kaiming-uniform, B = 0), as get_peft_model does it."""
    from peft.tuners.lora.layer import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                module.reset_lora_parameters(adapter, init_lora_weights=True)


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} is {value!r}; it must be a positive integer.")


def _check_positive_number(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} is {value!r}; it must be a positive finite number.")


def _check_fraction(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} is {value!r}; it must be a number in [0, 1).")


def _peft_params(method: str, defaults: dict, checks: dict[str, Callable]) -> Callable[[dict], dict]:
    def resolve(params: dict) -> dict:
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise ConfigError(
                f"{method} has no parameter {unknown[0]!r}; allowed parameters are {', '.join(sorted(defaults))}."
            )
        resolved = {**defaults, **params}
        for name, check in checks.items():
            check(f"{method}.{name}", resolved[name])
        return resolved

    return resolve


def _check_peft_basis(name: str, value) -> None:
    allowed = ("uniform", "sparse", "very_sparse")
    if value not in allowed:
        raise ConfigError(f"{name} is {value!r}; allowed values are {', '.join(map(repr, allowed))}.")


@register(
    "peft-lora",
    "peft's LoraConfig (r=16, alpha=32 by default; adapters in float32, peft's default)",
    _peft_params(
        "peft-lora",
        {"r": 16, "alpha": 32, "dropout": 0.0},
        {"r": _check_positive_int, "alpha": _check_positive_number, "dropout": _check_fraction},
    ),
    requires="peft",
    init_adapters=_init_peft_lora,
)
def _peft_lora(model, params: dict, targets: tuple[str, ...], trainable: tuple[str, ...]):
    import peft

    config = peft.LoraConfig(
        r=params["r"],
        lora_alpha=params["alpha"],
        lora_dropout=params["dropout"],
        target_modules=list(targets),
        modules_to_save=list(trainable) or None,
    )
    return peft.get_peft_model(model, config)


@register(
    "peft-lora-liger",
    "peft's LoraConfig on a model patched with Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear "
    "cross-entropy; liger_kernel's instance patch for the model's type); CUDA only",
    _peft_params(
        "peft-lora-liger",
        {"r": 16, "alpha": 32, "dropout": 0.0},
        {"r": _check_positive_int, "alpha": _check_positive_number, "dropout": _check_fraction},
    ),
    requires=("peft", "liger_kernel"),
    needs_cuda=True,
)
def _peft_lora_liger(model, params: dict, targets: tuple[str, ...], trainable: tuple[str, ...]):
    """Liger patches the model's modules in place (and its forward: the loss from labels without materialising the
    logits), then peft wraps the projections as in peft-lora."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise ConfigError(
            f"method 'peft-lora-liger' needs a model type Liger has kernels for (llama, qwen2, mistral, ...); "
            f"this model's is {model_type!r}."
        )
    MODEL_TYPE_TO_APPLY_LIGER_FN[model_type](model=model)
    return _peft_lora(model, params, targets, trainable)


@register(
    "peft-randlora",
    "peft's RandLoraConfig (r=32, alpha=640 by default); basis uniform | sparse | very_sparse",
    _peft_params(
        "peft-randlora",
        {"r": 32, "alpha": 640, "dropout": 0.0, "basis": "uniform", "seed": 0},
        {
            "r": _check_positive_int,
            "alpha": _check_positive_number,
            "dropout": _check_fraction,
            "basis": _check_peft_basis,
        },
    ),
    requires="peft",
)
def _peft_randlora(model, params: dict, targets: tuple[str, ...], trainable: tuple[str, ...]):
    import peft

    config = peft.RandLoraConfig(
        r=params["r"],
        randlora_alpha=params["alpha"],
        randlora_dropout=params["dropout"],
        sparse=params["basis"] == "sparse",
        very_sparse=params["basis"] == "very_sparse",
        projection_prng_key=params["seed"],
        target_modules=list(targets),
        modules_to_save=list(trainable) or None,
    )
    return _keep_quantised_output_dtype(peft.get_peft_model(model, config))


def _keep_quantised_output_dtype(model):
    """peft (0.21) RandLora's 4-bit and 8-bit layers cast x to their float32 adapter dtype, then return
    `result.to(x.dtype)` with the new x: float32 activations leave a bf16 model's quantised layers and its bf16
    output layer refuses them ("expected mat1 and mat2 to have the same dtype"). peft's comment there says the
    output should keep the input's dtype; a forward hook on those layers does exactly that, and nothing else: the
    adapter still computes in float32, as peft leaves it."""
    layers = [m for m in model.modules() if type(m).__module__.startswith("peft.tuners.randlora.bnb")]
    for layer in layers:
        layer.register_forward_hook(lambda _m, args, out: out.to(args[0].dtype) if args else out)
    return model


@register(
    "peft-vera",
    "peft's VeraConfig (r=256 by default): shared frozen random low-rank bases, trained scaling vectors (rank <= r)",
    _peft_params(
        "peft-vera",
        {"r": 256, "dropout": 0.0, "d_initial": 0.1, "seed": 0},
        {"r": _check_positive_int, "dropout": _check_fraction, "d_initial": _check_positive_number},
    ),
    requires="peft",
)
def _peft_vera(model, params: dict, targets: tuple[str, ...], trainable: tuple[str, ...]):
    """VeRA (Kopiczko et al. 2024), the random-basis method RandLoRA measures itself against: ΔW = Λ_b B Λ_d A with
    A (r, in), B (out, r) shared, frozen and random, and only the vectors d (r) and b (out) trained per layer, so
    its update has rank <= r, where RandLoRA's reaches full rank with a similar count."""
    import peft

    config = peft.VeraConfig(
        r=params["r"],
        vera_dropout=params["dropout"],
        d_initial=params["d_initial"],
        projection_prng_key=params["seed"],
        save_projection=False,  # regenerated from the seed, as this project's bases are
        target_modules=list(targets),
        modules_to_save=list(trainable) or None,
    )
    return peft.get_peft_model(model, config)


def resolve_modules(model, patterns: tuple[str, ...], field: str, linear_only: bool, exclude=()) -> tuple[str, ...]:
    """Full names of the modules `patterns` select, by `randlora`'s matching rules ("all-linear" included, minus
    `exclude`), so that peft's methods wrap exactly the modules this project's methods wrap."""
    from randlora.targets import select_modules

    return tuple(select_modules(model, patterns, field, linear_only=linear_only, exclude=exclude))
