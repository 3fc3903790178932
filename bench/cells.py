"""A cell: one fully resolved configuration, its fields, their checks, its stable hash and its label.

Every field a grid may set is declared once in `FIELDS` with its default, its check and a one-line reason.
A cell is identified by the SHA-256 of its resolved fields (all but `timeout_s`, which changes how long we wait,
not what is measured), so the same configuration gets the same result file in every run and on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import randlora
from randlora import ConfigError

from . import methods, presets
from .precision import PRECISIONS
from .tasks import TASKS

INJECTIONS = ("none", "oom", "error", "nan", "hang")  # faults a grid may inject on purpose (tests, demos)
DEVICES = ("auto", "cpu", "cuda")
NOT_HASHED = ("timeout_s",)
HASH_CHARS = 12


class FieldError(ValueError):
    """A value a field does not accept; the message completes 'axes.precision[2] ...'."""


def _choice(allowed: Callable[[], tuple]) -> Callable[[Any], Any]:
    def check(value):
        options = allowed()
        if value not in options:
            raise FieldError(f"is {value!r}; allowed values are {', '.join(map(repr, options))}.")
        return value

    return check


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise FieldError(f"is {value!r}; it must be an integer >= {minimum}.")
        return value

    return check


def _positive_number(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise FieldError(f"is {value!r}; it must be a positive number.")
    return float(value)


def _boolean(value) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"is {value!r}; allowed values are true, false.")
    return value


def _patterns(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise FieldError(
            f"is {value!r}; it must be a non-empty list of module names or patterns, or null for the model's default."
        )
    return tuple(value)


def _model(value) -> str:
    if not isinstance(value, str):
        raise FieldError(f"is {value!r}; it must be a preset name or 'hf:<path or hub id>'.")
    try:
        presets.lookup(value)
    except ValueError as exc:
        raise FieldError(str(exc)) from None
    return value


@dataclass(frozen=True)
class MethodSpec:
    """A method and every one of its parameters (defaults filled in), e.g. randlora with impl="compiled"."""

    name: str
    params: tuple[tuple[str, Any], ...]  # sorted (key, value) pairs, hashable and stable

    @property
    def kwargs(self) -> dict:
        return dict(self.params)

    def label(self) -> str:
        """'randlora.compiled r=32': the impl after a dot where the method has several, then r where it has one."""
        kw = self.kwargs
        several = sum(method == self.name for method, _ in randlora.implementations()) > 1
        text = self.name + (f".{kw['impl']}" if several else "")
        extras = [f"r={kw['r']}"] if "r" in kw else []
        extras += [f"basis={kw['basis']}"] if kw.get("basis", "uniform") != "uniform" else []
        return " ".join([text, *extras])


def method_spec(value) -> MethodSpec:
    """'lora' or {name: randlora, impl: sparse, r: 8} -> MethodSpec with the method's defaults filled in."""
    if isinstance(value, str):
        name, params = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        params = {k: v for k, v in value.items() if k != "name"}
        name = value["name"]
    else:
        raise FieldError(f"is {value!r}; write a method name or a mapping with 'name' and the method's parameters.")
    if name not in methods.METHODS:
        raise FieldError(f"names method {name!r}; allowed values are {', '.join(map(repr, methods.METHODS))}.")
    try:
        resolved = methods.METHODS[name].resolve(params)
    except ConfigError as exc:
        raise FieldError(f"is not a valid {name!r} method: {exc}") from None
    return MethodSpec(name, tuple(sorted(resolved.items())))


@dataclass(frozen=True)
class Field:
    """A grid field: its default, its check (returns the normalised value or raises FieldError), what it means."""

    default: Any
    check: Callable[[Any], Any]
    doc: str
    list_valued: bool = False  # its values are lists themselves: in axes, a list of lists gives alternatives


FIELDS: dict[str, Field] = {
    "model": Field("tiny-llama", _model, "a preset (`python -m bench list`) or 'hf:<path or hub id>'"),
    "method": Field("randlora", method_spec, "a method name, or {name: ..., <its parameters>}"),
    "precision": Field("fp32", _choice(lambda: tuple(PRECISIONS)), "how weights are stored and matmuls computed"),
    "batch_size": Field(1, _integer(1), "samples per step"),
    "seq_len": Field(128, _integer(1), "tokens per sample (image models: fixed by the preset)"),
    "warmup_steps": Field(3, _integer(1), "steps before timing starts; the first one is reported as first_step_s"),
    "steps": Field(8, _integer(1), "timed steps"),
    "seed": Field(0, _integer(0), "seeds the weights and the batches"),
    "task": Field("throughput", _choice(lambda: tuple(TASKS)), "what the cell trains on"),
    "compile": Field(False, _boolean, "torch.compile the whole model (what a user would try first)"),
    "targets": Field(None, _patterns, "modules the adapters wrap; null: the preset's default", list_valued=True),
    "trainable_modules": Field(
        None, _patterns, "modules trained in full by every method; null: the preset's", list_valued=True
    ),
    "lr": Field(1e-4, _positive_number, "AdamW learning rate"),
    "device": Field("auto", _choice(lambda: DEVICES), "auto: the GPU the runner assigns, else the CPU"),
    "trust_remote_code": Field(False, _boolean, "for hf: models only; runs code from the model's repository"),
    "inject": Field(
        "none", _choice(lambda: INJECTIONS), "a deliberate fault at the first step: oom, error, nan loss, hang"
    ),
    "timeout_s": Field(1800.0, _positive_number, "the cell's process is killed after this many seconds"),
}


@dataclass(frozen=True)
class Cell:
    """The fields of FIELDS, checked and resolved: the model's default targets filled in, a ViT's seq_len set to
    its patch count. What each field means is in FIELDS (and `python -m bench list fields`)."""

    model: str
    method: MethodSpec
    precision: str
    batch_size: int
    seq_len: int
    warmup_steps: int
    steps: int
    seed: int
    task: str
    compile: bool
    targets: tuple[str, ...]
    trainable_modules: tuple[str, ...]
    lr: float
    device: str
    trust_remote_code: bool
    inject: str
    timeout_s: float

    def to_dict(self) -> dict:
        data = asdict(self)
        data["method"] = {"name": self.method.name, **self.method.kwargs}
        data["targets"], data["trainable_modules"] = list(self.targets), list(self.trainable_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Cell:
        """The inverse of `to_dict` (a result file or a child's spec back to a Cell)."""
        data = dict(data)
        method = dict(data.pop("method"))
        data["method"] = MethodSpec(method.pop("name"), tuple(sorted(method.items())))
        data["targets"], data["trainable_modules"] = tuple(data["targets"]), tuple(data["trainable_modules"])
        return cls(**data)

    def identity(self) -> dict:
        """The fields that define what is measured (everything but NOT_HASHED)."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_HASHED}

    @property
    def hash(self) -> str:
        return stable_hash(self.identity())

    @property
    def group(self) -> str:
        """Cells equal in all but batch size: an OOM at one batch size skips the larger ones."""
        return stable_hash({k: v for k, v in self.identity().items() if k != "batch_size"})

    def label(self) -> str:
        parts = [self.model, self.method.label(), self.precision, f"b{self.batch_size}x{self.seq_len}"]
        parts += ["compile"] if self.compile else []
        parts += [f"seed{self.seed}"] if self.seed else []
        parts += [self.task] if self.task != "throughput" else []
        parts += [f"inject={self.inject}"] if self.inject != "none" else []
        return " ".join(parts)


def _canonical(value):
    """640.0 and 640 are the same setting: integral floats hash as integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def stable_hash(data: dict) -> str:
    """The first HASH_CHARS hex digits of the SHA-256 of `data` as canonical JSON (sorted keys, integral floats as
    integers), the same in every process and on every machine."""
    text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def resolve(values: dict) -> Cell:
    """A Cell from checked field values; fills the model's defaults and settles what a model fixes.

    Raises FieldError (its message a whole clause) when fields contradict each other.
    """
    preset = presets.lookup(values["model"])
    default_targets, default_trainable = presets.default_modules(values["model"])
    targets = values["targets"] if values["targets"] is not None else default_targets
    trainable = values["trainable_modules"] if values["trainable_modules"] is not None else default_trainable
    seq_len = values["seq_len"]
    if preset is not None:
        limit = preset.max_seq_len()
        if limit is not None and seq_len > limit:
            raise FieldError(
                f"seq_len {seq_len} exceeds the {limit} positions of model {preset.name!r}; "
                "lower seq_len or exclude the combination."
            )
        seq_len = preset.tokens_per_sample(seq_len)  # image models: the patch count, whatever the grid says
    uses_targets = methods.METHODS[values["method"].name].uses_targets
    return Cell(
        **{
            **values,
            "seq_len": seq_len,
            "targets": targets if uses_targets else (),
            "trainable_modules": trainable,
            "trust_remote_code": values["trust_remote_code"] and presets.is_hf(values["model"]),
        }
    )
