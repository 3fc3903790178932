"""A cell: one fully resolved configuration, its fields, their checks, its stable hash and its label.

Every field a grid may set is declared once in `FIELDS` with its default, its check and a one-line reason.
A cell is identified by the SHA-256 of its resolved fields (all but `timeout_s`, which changes how long we wait,
not what is measured), so the same configuration gets the same result file in every run and on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

import randlora
from randlora import ConfigError

from bench.spec import methods, modelcheck, presets
from bench.spec.precision import PRECISIONS
from bench.spec.quant import QUANTS
from bench.spec.tasks import TASKS

INJECTIONS = ("none", "oom", "error", "nan", "hang")  # faults a grid may inject on purpose (tests, demos)
DEVICES = ("auto", "cpu", "cuda")
NOT_HASHED = ("timeout_s",)
MAX_SEED = 2**32 - 1
MAX_GPUS = 64  # ranks of one cell: more is a typo, and on a CPU each would be a process
HASHED_IF_SET = {  # added later: at their defaults they stay out of the hash, so older cells keep theirs
    "task_args": {}, "gpus": 1, "head_lr": None, "compile_scope": "model",
    "lr_schedule": "constant", "lr_warmup_ratio": 0.0, "grad_clip": None, "basis_seed": None,
    "quant": "none",
    "micro_batches": 1,
}
LR_SCHEDULES = ("constant", "cosine", "linear")
BASIS_SEEDS = (None, "cell")
# Method parameters the library added later, left out of the hash at their default for the same reason.
METHOD_PARAMS_HASHED_IF_SET = {"n_bases": None, "accumulate": "micro_batch", "keep_weight": False}
COMPILE_SCOPES = ("model", "blocks")
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


def _integer(minimum: int, maximum: int | None = None) -> Callable[[Any], int]:
    def check(value):
        allowed = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum or value > (maximum or value):
            raise FieldError(f"is {value!r}; it must be an integer {allowed}.")
        return value

    return check


def _positive_number(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise FieldError(f"is {value!r}; it must be a positive number.")
    return float(value)


def _optional_positive_number(value) -> float | None:
    if value is None:
        return None
    try:
        return _positive_number(value)
    except FieldError:
        raise FieldError(f"is {value!r}; it must be a positive number, or null.") from None


def _warmup_ratio(value) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 0.5:
        raise FieldError(f"is {value!r}; it must be a number from 0 to 0.5 (the share of the steps spent warming up).")
    return float(value)


def _basis_seed(value):
    if value not in BASIS_SEEDS:
        raise FieldError(f"is {value!r}; allowed values are null (the method's own seed) and 'cell' (the cell's seed).")
    return value


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
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:  # randlora would refuse it only inside the cell's process
            raise FieldError(f"holds {pattern!r}, which is not a valid regular expression ({exc}); fix or escape it.")
    return tuple(value)


def _model(value) -> str:
    if not isinstance(value, str):
        raise FieldError(f"is {value!r}; it must be a preset name or 'hf:<path or hub id>'.")
    if value in _task_models():
        return value  # a pretrained model an accuracy task brings; `resolve` checks that the task is its own
    try:
        presets.lookup(value)
    except ValueError as exc:
        raise FieldError(str(exc)) from None
    return value


def _task_models() -> dict[str, list[str]]:
    """Models that tasks bring themselves -> the tasks that bring them."""
    models: dict[str, list[str]] = {}
    for task in TASKS.values():
        if task.model is not None:
            models.setdefault(task.model, []).append(task.name)
    return models


def _task_args(value) -> dict:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FieldError(f"is {value!r}; it must be a mapping from the task's argument names to values.")
    return dict(value)


def _frozen(value):
    """Lists as tuples, so that task arguments sit in a frozen Cell."""
    return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


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
        extras += [f"n_bases={kw['n_bases']}"] if kw.get("n_bases") is not None else []
        extras += [f"accumulate={kw['accumulate']}"] if kw.get("accumulate", "micro_batch") != "micro_batch" else []
        extras += ["keep_weight"] if kw.get("keep_weight") else []
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
    "quant": Field(
        "none",
        _choice(lambda: tuple(QUANTS)),
        "how the frozen base's linear layers are stored: none (the precision's dtype), int8 or nf4 (bitsandbytes)",
    ),
    "batch_size": Field(1, _integer(1), "samples per step (per GPU when gpus > 1)"),
    "seq_len": Field(128, _integer(1), "tokens per sample (image models: fixed by the preset)"),
    "warmup_steps": Field(3, _integer(1), "steps before timing starts; the first one is reported as first_step_s"),
    "steps": Field(8, _integer(1), "timed steps"),
    "micro_batches": Field(
        1, _integer(1), "forward + backward passes per optimizer step (gradient accumulation); a step is all of them"
    ),
    # < 2**32: tasks derive generator seeds as seed * 1_000_003 + i, which torch.manual_seed takes below 2**64
    "seed": Field(0, _integer(0, MAX_SEED), "seeds the weights and the batches"),
    "task": Field("throughput", _choice(lambda: tuple(TASKS)), "what the cell trains on"),
    "task_args": Field({}, _task_args, "the task's own arguments (bench/README.md); checked by the task"),
    "compile": Field(False, _boolean, "torch.compile the whole model (what a user would try first)"),
    "compile_scope": Field(
        "model",
        _choice(lambda: COMPILE_SCOPES),
        "with compile: true, what is compiled: model (the whole model at once) or blocks (each repeated block, e.g. "
        "a decoder layer, on its own: one graph reused by every block, a shorter compile)",
    ),
    "targets": Field(None, _patterns, "modules the adapters wrap; null: the preset's default", list_valued=True),
    "trainable_modules": Field(
        None, _patterns, "modules trained in full by every method; null: the preset's", list_valued=True
    ),
    "lr": Field(1e-4, _positive_number, "AdamW learning rate"),
    "head_lr": Field(
        None,
        _optional_positive_number,
        "learning rate of the trainable_modules (a head, a pooler) in every method; null: lr",
    ),
    "lr_schedule": Field(
        "constant",
        _choice(lambda: LR_SCHEDULES),
        "the rate over all warmup_steps + steps: constant, or cosine / linear decay to 0 (after lr_warmup_ratio)",
    ),
    "lr_warmup_ratio": Field(0.0, _warmup_ratio, "share of all steps with a linear warm-up from 0 (with lr_schedule)"),
    "grad_clip": Field(None, _optional_positive_number, "clip the gradients' global norm to this value; null: off"),
    "basis_seed": Field(
        None, _basis_seed, "RandLoRA's basis seed: null: the method's `seed` (0); 'cell': the cell's seed"
    ),
    "device": Field("auto", _choice(lambda: DEVICES), "auto: the GPU the runner assigns, else the CPU"),
    "gpus": Field(
        1, _integer(1, MAX_GPUS), "GPUs of the cell: N > 1 runs N ranks under torchrun, the model sharded with FSDP2"
    ),
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
    task_args: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs, every default filled in by the task
    gpus: int = 1  # ranks of the cell, one GPU each (on a CPU: processes over gloo)
    head_lr: float | None = None  # the trainable_modules' learning rate; None: lr
    compile_scope: str = "model"  # with compile: the whole model, or each repeated block
    lr_schedule: str = "constant"  # the rate over warmup_steps + steps
    lr_warmup_ratio: float = 0.0  # the share of those steps spent in a linear warm-up
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    basis_seed: str | None = None  # "cell": RandLoRA's bases from the cell's seed; None: the method's seed
    quant: str = "none"  # the frozen base's storage: none, int8 or nf4 (bench/spec/quant.py)
    micro_batches: int = 1  # forward + backward passes of batch_size samples per optimizer step

    @property
    def task_kwargs(self) -> dict:
        return dict(self.task_args)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["method"] = {"name": self.method.name, **self.method.kwargs}
        data["task_args"] = self.task_kwargs
        data["targets"], data["trainable_modules"] = list(self.targets), list(self.trainable_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Cell:
        """The inverse of `to_dict` (a result file or a child's spec back to a Cell)."""
        data = dict(data)
        method = dict(data.pop("method"))
        data["method"] = MethodSpec(method.pop("name"), tuple(sorted(method.items())))
        data["targets"], data["trainable_modules"] = tuple(data["targets"]), tuple(data["trainable_modules"])
        data["task_args"] = tuple(sorted((k, _frozen(v)) for k, v in data.get("task_args", {}).items()))
        return cls(**data)

    def identity(self) -> dict:
        """The fields that define what is measured: everything but NOT_HASHED, and the fields added after cells were
        first recorded only when they differ from their default, so that older cells keep their hashes."""
        identity = {
            k: v
            for k, v in self.to_dict().items()
            if k not in NOT_HASHED and not (k in HASHED_IF_SET and v == HASHED_IF_SET[k])
        }
        identity["method"] = {
            k: v
            for k, v in identity["method"].items()
            if not (k in METHOD_PARAMS_HASHED_IF_SET and v == METHOD_PARAMS_HASHED_IF_SET[k])
        }
        return identity

    @property
    def hash(self) -> str:
        return stable_hash(self.identity())

    @property
    def group(self) -> str:
        """Cells equal in all but batch size: an OOM at one batch size skips the larger ones."""
        return stable_hash({k: v for k, v in self.identity().items() if k != "batch_size"})

    def label(self) -> str:
        batch = f"b{self.batch_size}x{self.seq_len}" + (f"x{self.micro_batches}mb" if self.micro_batches > 1 else "")
        parts = [self.model, self.method.label(), self.precision, batch]
        parts += [f"quant={self.quant}"] if self.quant != "none" else []
        parts += [f"{self.gpus}gpus"] if self.gpus > 1 else []
        parts += compile_label(self.compile, self.compile_scope)
        parts += [f"seed{self.seed}"] if self.seed else []
        parts += [self.task, f"lr={self.lr:g}"] if self.task != "throughput" else []  # accuracy cells sweep lr
        parts += [f"head_lr={self.head_lr:g}"] if self.head_lr is not None else []
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


def compile_label(compile: bool, scope: str | None) -> list[str]:
    """A label's compile part: ["compile"] for the whole model, ["compile=blocks"] by blocks, [] uncompiled."""
    if not compile:
        return []
    return ["compile" if (scope or "model") == "model" else f"compile={scope}"]


def stable_hash(data: dict) -> str:
    """The first HASH_CHARS hex digits of the SHA-256 of `data` as canonical JSON (sorted keys, integral floats as
    integers), the same in every process and on every machine."""
    text = json.dumps(_canonical(data), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def _check_quant(values: dict) -> None:
    """A quantised base needs a frozen base, one process and a device its library runs on."""
    quant = values.get("quant", "none")
    if quant == "none":
        return
    method = methods.METHODS[values["method"].name]
    if method.trains_base:
        raise FieldError(
            f"quant {quant!r} stores the frozen base quantised, but method {method.name!r} trains the base's weights, "
            "which a quantised layer cannot hold; use an adapter method or quant: none."
        )
    if values.get("gpus", 1) > 1:
        raise FieldError(
            f"quant {quant!r} runs on one GPU: FSDP2 does not shard bitsandbytes' packed weights here; "
            "set gpus: 1 or quant: none."
        )
    devices = QUANTS[quant].devices
    if values.get("device", "auto") not in ("auto", *devices):
        raise FieldError(
            f"quant {quant!r} runs on {' and '.join(devices)} only; set device to one of them or quant: none."
        )


def resolve(values: dict) -> Cell:
    """A Cell from checked field values; fills the model's defaults and settles what a model fixes.

    Raises FieldError (its message a whole clause) when fields contradict each other.
    """
    task = TASKS[values["task"]]
    owners = _task_models().get(values["model"], [])
    if owners and values["task"] not in owners:
        raise FieldError(
            f"model {values['model']!r} is the model of task(s) {', '.join(owners)}, not of task {task.name!r}."
        )
    if task.model is not None and values["model"] != task.model:
        raise FieldError(f"task {task.name!r} trains its own model, so model must be {task.model!r}.")
    if task.resolve is not None:
        try:
            values = task.resolve(dict(values))
        except ValueError as exc:
            raise FieldError(str(exc)) from None
    elif values["task_args"]:
        raise FieldError(f"task {task.name!r} takes no task_args.")
    own_model = task.model is not None
    preset = None if own_model else presets.lookup(values["model"])
    hf = not own_model and presets.is_hf(values["model"])
    family = modelcheck.model_type(values["model"], values["trust_remote_code"]) if hf else None
    default_targets, default_trainable = ((), ()) if own_model else presets.default_modules(values["model"], family)
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
    if values.get("compile_scope", "model") != "model" and not values["compile"]:
        raise FieldError(
            f"compile_scope {values['compile_scope']!r} needs compile: true; set compile: true or drop compile_scope."
        )
    if values.get("head_lr") is not None and not trainable:
        raise FieldError(
            "head_lr is set but the cell trains no module in full (trainable_modules is empty); "
            "name the trainable_modules or drop head_lr."
        )
    if values.get("basis_seed") == "cell" and "seed" not in values["method"].kwargs:
        raise FieldError(
            f"basis_seed 'cell' sets the seed of random bases, and method {values['method'].name!r} has none; "
            "drop basis_seed or use a RandLoRA method."
        )
    _check_quant(values)
    if values["method"].kwargs.get("accumulate") == "window" and values.get("gpus", 1) > 1:
        raise FieldError(
            f"accumulate 'window' runs on one GPU: it builds each layer's W0 + ΔW whole, and with gpus {values['gpus']} "
            "FSDP2 shards W0, λ and γ across ranks; set gpus: 1 or accumulate: micro_batch."
        )
    uses_targets = methods.METHODS[values["method"].name].uses_targets
    return Cell(
        **{
            **values,
            "seq_len": seq_len,
            "targets": targets if uses_targets else (),
            "trainable_modules": trainable,
            "trust_remote_code": values["trust_remote_code"] and presets.is_hf(values["model"]),
            "task_args": tuple(sorted((k, _frozen(v)) for k, v in values["task_args"].items())),
        }
    )
