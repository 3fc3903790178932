"""Adapter configurations: frozen dataclasses, validated on construction.

One config class per method. The method is a class attribute; the variant of a method is its `impl` field.
`randlora.adapt(model, config)` dispatches on `(config.method, config.impl)` through the registry.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from .errors import ConfigError

RandLoRAImpl = Literal["eager", "compiled", "sparse", "semi_structured"]
LoRAImpl = Literal["eager"]
FullImpl = Literal["eager"]
Basis = Literal["uniform", "normal", "sparse", "very_sparse", "sparse_2_4"]
Contraction = Literal["auto", "tokens", "materialized"]
# When dL/dλ, dL/dγ are formed under gradient accumulation: every micro-batch (the reference), or once per
# accumulation window from dL/d(W0 + ΔW) accumulated over it (randlora.accumulation_window).
Accumulate = Literal["micro_batch", "window"]
ParamDtype = Literal["float32", "model"]
KEEP_WEIGHT_IMPLS = ("eager", "compiled")  # the impls whose function can keep W0 + ΔW from forward for backward

# Names of the projections of a Llama-family decoder block; a convenient default for causal LMs.
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _check_choice(cls_name: str, name: str, value, literal) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ConfigError(f"{cls_name}.{name} is {value!r}; allowed values are {', '.join(map(repr, allowed))}.")


SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes seeds in [0, 2**64)


def _as_tuple(cls_name: str, name: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{cls_name}.{name} is {value!r}; it must be a module name, a pattern or a list of them.")
    return tuple(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AdapterConfig:
    """Fields every method shares.

    target_modules: module names or regular expressions. A pattern selects a module when it equals the module's
        full name, equals its last component (``q_proj`` selects ``model.layers.0.self_attn.q_proj``), or
        ``re.fullmatch``-es the full name. Every pattern must select at least one linear layer
        (``nn.Linear`` or transformers' ``Conv1D``). ``"all-linear"`` selects every one but the output layer and the
        `trainable_modules`.
    trainable_modules: modules trained in full next to the adapter in every method (a classification head, a
        pooler), so that methods are compared on equal terms. Same matching rules; may match any module type.
    """

    method: ClassVar[str] = ""
    target_modules: tuple[str, ...] = LLAMA_PROJECTIONS
    trainable_modules: tuple[str, ...] = ()
    impl: str = "eager"

    def __post_init__(self) -> None:
        for name in ("target_modules", "trainable_modules"):
            object.__setattr__(self, name, _as_tuple(type(self).__name__, name, getattr(self, name)))
            for pattern in getattr(self, name):
                if not isinstance(pattern, str) or not pattern:
                    raise ConfigError(f"{type(self).__name__}.{name} must hold non-empty strings, got {pattern!r}.")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["method"] = self.method
        return data

    @staticmethod
    def from_dict(data: dict) -> AdapterConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"an adapter config must be a JSON object of fields, got a {type(data).__name__}.")
        data = dict(data)
        method = data.pop("method", None)
        classes = {cls.method: cls for cls in (RandLoRAConfig, LoRAConfig, FullFinetuneConfig)}
        if method not in classes:
            raise ConfigError(f"method is {method!r}; allowed values are {', '.join(map(repr, classes))}.")
        cls = classes[method]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field {unknown[0]!r}; allowed fields are {', '.join(sorted(known))}."
            )
        for key in ("target_modules", "trainable_modules"):
            if key in data and isinstance(data[key], list):
                data[key] = tuple(data[key])
        return cls(**data)


def _validate_low_rank(config) -> None:
    """The checks RandLoRA and LoRA share: r, alpha, dropout, param_dtype and a non-empty target list."""
    name = type(config).__name__
    if not _is_int(config.r) or config.r <= 0:
        raise ConfigError(f"{name}.r is {config.r!r}; it must be a positive integer (the paper uses 4 to 32).")
    if not _is_number(config.alpha) or not math.isfinite(config.alpha) or config.alpha <= 0:
        raise ConfigError(f"{name}.alpha is {config.alpha!r}; it must be a positive finite number.")
    if not _is_number(config.dropout) or not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"{name}.dropout is {config.dropout!r}; it must be in [0, 1).")
    _check_choice(name, "param_dtype", config.param_dtype, ParamDtype)
    if not config.target_modules:
        raise ConfigError(f"{name}.target_modules is empty; name at least one linear module or pattern.")


@dataclass(frozen=True)
class RandLoRAConfig(AdapterConfig):
    """RandLoRA: ΔW = (alpha / r) · Σ_j B_j diag(λ_j) A diag(γ_j), j = 1..n, bases shared and regenerated from `seed`.

    A layer with d = min(in, out) gets n = ceil(d / r) bases (full rank), or n = min(n_bases, ceil(d / r)) when
    `n_bases` is set: ΔW then has rank at most min(d, n·r) and the layer trains n·(r + d) parameters. Since d ≫ r,
    the count hardly depends on r: at a fixed n_bases, raising r raises the update's rank at about the same
    budget (the paper's Table 2). `randlora.update_rank` gives the rank, `randlora.n_bases_for_budget` an n.

    The `sparse` basis (66 % zeros) is not full rank at small r either: a column of the shared A (r, d) is all
    zero with probability (2/3)^r, and each such column is a zero column of every layer's ΔW: with seed 0 and
    d = 896, 591 columns are zero at r = 1 (rank 305 of 896), 36 at r = 8, 1 at r = 16. `very_sparse` loses a
    fraction (1 - 2/s)^r of them (bases.py).
    """

    method: ClassVar[str] = "randlora"
    r: int = 32  # rank of each random basis; n = ceil(d / r) bases make the update full rank
    alpha: float = 640.0  # scaling = alpha / r (peft's default pairing r=32, alpha=640)
    impl: RandLoRAImpl = "eager"
    basis: Basis = "uniform"  # distribution of the shared random bases (the paper's four, and 2:4 ternary)
    seed: int = 0  # the bases are regenerated from this seed on the CPU in float32
    n_bases: int | None = None  # cap on the bases per layer (the update-rank ablation); None = ceil(d / r)
    dropout: float = 0.0  # dropout on the adapter's input path (forces the token contraction when > 0)
    contraction: Contraction = "auto"  # auto: per call, the cheaper of the two orders by FLOP count
    param_dtype: ParamDtype = "float32"  # dtype λ and γ are stored in; compute runs in the model's dtype
    # "window": inside randlora.accumulation_window, W0 + ΔW is built once and λ, γ get their gradients once per
    # window (a weight-sized tensor and its gradient held per layer); outside a window, as "micro_batch"
    accumulate: Accumulate = "micro_batch"
    # materialised order: keep W0 + ΔW from forward for backward instead of rebuilding it (one weight-sized tensor
    # per layer held from forward to backward, 2·D·d·n·r FLOPs fewer per layer and step); impls eager and compiled
    keep_weight: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_low_rank(self)
        name = type(self).__name__
        _check_choice(name, "impl", self.impl, RandLoRAImpl)
        if not isinstance(self.keep_weight, bool):
            raise ConfigError(f"{name}.keep_weight is {self.keep_weight!r}; it must be true or false.")
        if self.keep_weight and self.impl not in KEEP_WEIGHT_IMPLS:
            raise ConfigError(
                f"{name}.keep_weight is true with impl {self.impl!r}, which always rebuilds W0 + ΔW in backward; "
                f"use impl {' or '.join(map(repr, KEEP_WEIGHT_IMPLS))}, or keep_weight false."
            )
        _check_choice(name, "accumulate", self.accumulate, Accumulate)
        if self.accumulate == "window" and self.dropout > 0:
            raise ConfigError(
                f"{name}.accumulate is 'window' with dropout {self.dropout}; the window's one weight per step has no "
                "adapter path to drop; set dropout to 0 or accumulate to 'micro_batch'."
            )
        _check_choice(name, "basis", self.basis, Basis)
        _check_choice(name, "contraction", self.contraction, Contraction)
        if not _is_int(self.seed) or not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"{name}.seed is {self.seed!r}; it must be an integer in [0, 2**64).")
        if self.n_bases is not None and (not _is_int(self.n_bases) or self.n_bases <= 0):
            raise ConfigError(f"{name}.n_bases is {self.n_bases!r}; it must be a positive integer or None (full rank).")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
    """LoRA: ΔW = (alpha / r) · B A, A Kaiming-uniform, B zero at start."""

    method: ClassVar[str] = "lora"
    r: int = 16
    alpha: float = 32.0
    impl: LoRAImpl = "eager"
    dropout: float = 0.0
    param_dtype: ParamDtype = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        _validate_low_rank(self)
        _check_choice(type(self).__name__, "impl", self.impl, LoRAImpl)

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class FullFinetuneConfig(AdapterConfig):
    """Full fine-tuning: every parameter of the model trains (target_modules is ignored)."""

    method: ClassVar[str] = "full"
    target_modules: tuple[str, ...] = field(default=())
    impl: FullImpl = "eager"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice(type(self).__name__, "impl", self.impl, FullImpl)
