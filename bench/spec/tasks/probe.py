"""Full-rank probe (`full-rank-probe`): how much of a known full-rank change can each method express?

    teacher   the frozen base (any preset, random weights from the cell's seed) with W0 + ΔW* in chosen layers
    ΔW*       U diag(s) Vᵀ (out, in); U (out, k), V (in, k) random orthonormal; s_i ∝ (i + 1)^(-delta_decay), i < k,
              k = delta_rank (null: min(out, in), full rank); scaled so that ‖ΔW*‖_F = delta_scale · ‖W0‖_F
    student   the same base adapted by the cell's method, trained to reproduce the teacher's outputs on inputs the
              task draws, without dropout; two ways (task_args.match):

    layers    (default) each chosen layer's outputs, on inputs x ~ N(0, I) drawn afresh at every step:
              loss = Σ_l ‖x_l (ΔŴ_l − ΔW*_l)ᵀ‖² / Σ_l ‖x_l ΔW*_lᵀ‖², whose expectation is exactly the share of
              ΔW*'s energy not recovered, so the probe measures expressivity and nothing else
    model     the model's final hidden states, on random token ids (or images), through the whole network:
              loss = ‖h_student − h_teacher‖² / ‖h_base − h_teacher‖² over a pool of `train_batches` batches.
              Beware: in a randomly initialised transformer, most layers see inputs of very low effective rank
              (llama-60m: participation ratio 1-5 % of the width beyond the first layer), so through the data a
              full-rank ΔW* looks low rank and LoRA loses little; `layers` is the well-posed question.

At p trainable parameters per layer, LoRA of rank r recovers at most the top-r part of ΔW* (Eckart-Young:
Σ_{i<r} s_i² / Σ s_i², r/k for a flat spectrum), reported as `top_r_energy` for LoRA cells; RandLoRA's update
is full rank but spans a family of about p dimensions. A flat, full-rank ΔW* (delta_decay 0) is where the
difference shows; a steep spectrum (delta_decay >= 1) favours LoRA. This is the paper's central question.

Metrics: delta_recovered = 1 − Σ‖ΔŴ − ΔW*‖²_F / Σ‖ΔW*‖²_F over the teacher's layers (ΔŴ: what the student added
to W0; 1 exact, 0 nothing, < 0 worse than nothing); val_/test_output_recovered = 1 − the loss on held-out inputs
(the selection metric, bench/views/accuracy.py); model mode also val_/test_accuracy = agreement with the teacher
(the share of held-out positions where the student's top-1 prediction equals the teacher's).
Speed: a layers-mode step runs the chosen layers only (batch_size × seq_len rows each), not the whole model, so
compare its samples/s with other probe cells only (its FLOP count and MFU assume a whole-model step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from bench.spec.tasks.base import Task, register
from bench.spec.tasks.args import Arg, integer, number, one_gpu, optional, patterns, resolve_args
from bench.spec.tasks.classify import TaskInfo, with_data

NAME = "full-rank-probe"
MODES = ("layers", "model")
LORA_METHODS = ("lora", "peft-lora")  # methods whose `r` is the rank of the update
HELD_OUT_STREAM = {"val": 10, "test": 20}  # training steps draw from streams 100, 101, ...


def _mode(value) -> str | None:
    return None if value in MODES else f"allowed values are {', '.join(map(repr, MODES))}"


ARGS = {
    "match": Arg("layers", _mode, "what the student matches: each layer's outputs, or the model's hidden states"),
    "layers": Arg(None, optional(patterns), "where ΔW* sits (names or patterns); null: the cell's targets"),
    "delta_rank": Arg(None, optional(integer(1)), "rank k of ΔW* (capped at min(out, in)); null: full rank"),
    "delta_decay": Arg(0.0, number(0.0, 10.0), "spectrum s_i ∝ (i + 1)^-decay: 0 flat, 1 steep"),
    "delta_scale": Arg(0.5, number(1e-6, 100.0), "‖ΔW*‖_F / ‖W0‖_F in every layer"),
    "train_batches": Arg(32, integer(1), "model mode: distinct training batches (teacher outputs computed once)"),
    "eval_samples": Arg(512, integer(1), "held-out samples (model mode) or rows per layer (layers mode) per split"),
    "eval_batch_size": Arg(32, integer(1), "model mode: samples per forward pass when scoring"),
}


def resolve(values: dict) -> dict:
    from bench.spec.presets import default_modules

    args = resolve_args(NAME, ARGS, values["task_args"])
    one_gpu(NAME, values)
    if args["layers"] is None:
        args["layers"] = list(values["targets"] or default_modules(values["model"])[0])
    values["task_args"] = args
    if values["targets"] is None:
        values["targets"] = tuple(args["layers"])  # the adapters wrap exactly the teacher's layers
    if values["trainable_modules"] is None:
        values["trainable_modules"] = ()  # the loss never reaches a classification head
    return values


# --- the teacher's change ---------------------------------------------------------------------------------------
def spectrum(out_features: int, in_features: int, rank: int | None, decay: float, norm: float, device=None):
    """The singular values of ΔW*, descending: k = min(rank or ∞, out, in) values ∝ (i+1)^-decay, 2-norm `norm`."""
    import torch

    k = min(rank or min(out_features, in_features), out_features, in_features)
    values = (torch.arange(k, dtype=torch.float32, device=device) + 1) ** (-decay)
    return values * (norm / values.norm())


def teacher_change(out_features: int, in_features: int, rank: int | None, decay: float, norm: float, generator,
                   device):
    """ΔW* (out, in) float32 on `device`: U diag(s) Vᵀ with s = `spectrum(...)`, U and V orthonormal from the QR
    of Gaussians drawn on the CPU from `generator` (signs fixed by diag(R) > 0, so the same on every device)."""
    import torch

    values = spectrum(out_features, in_features, rank, decay, norm, device)

    def orthonormal(rows: int):
        q, r = torch.linalg.qr(torch.randn(rows, len(values), generator=generator).to(device))
        return q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)

    return (orthonormal(out_features) * values) @ orthonormal(in_features).T


def top_r_energy(changes: list, args: dict, r: int) -> float:
    """The share of the energy of all ΔW* in their top r singular values: LoRA's ceiling (Eckart-Young)."""
    top = total = 0.0
    for change in changes:
        values = spectrum(*change.shape, args["delta_rank"], args["delta_decay"], change.norm().item())
        top += values[:r].pow(2).sum().item()
        total += values.pow(2).sum().item()
    return top / total


@dataclass(frozen=True)
class Held:
    """Model mode: held-out inputs, and what the teacher (and the base) make of them."""

    inputs: list[dict]  # model inputs, one dict per chunk
    teacher_hidden: list  # float32 per chunk
    teacher_top1: list  # argmax of the teacher's logits per chunk
    base_gap: float  # mean ‖h_base − h_teacher‖² over the split


@dataclass(frozen=True)
class Probe:
    match: str
    layers: dict  # name -> (W0 clone in the model's dtype, ΔW* float32)
    rows: int  # layers mode: rows of x per layer and step (batch_size × tokens per sample)
    eval_rows: int  # layers mode: held-out rows per layer and split
    seed: int
    top_r_energy: float | None  # LoRA's ceiling at the cell's rank; None for other methods
    energy: float  # Σ_l ‖ΔW*_l‖²_F
    modules: dict = field(default_factory=dict)  # id(adapted model) -> its teacher layers, found once
    pool: list | None = None  # model mode: training batches {"inputs", "target"}
    scale: float = 1.0  # model mode: mean ‖h_base − h_teacher‖² over the pool
    val: Held | None = None
    test: Held | None = None
    causal: bool = False
    # layers mode on real inputs (update_probe.py): inputs(layer index, split, rows, seed) -> x (rows, in) in the
    # layer's dtype; the gap is then normalised on the batch itself, Σ‖x(ΔŴ − ΔW*)ᵀ‖² / Σ‖x ΔW*ᵀ‖². None: x ~ N(0, I)
    inputs: Callable | None = None
    extra: dict = field(default_factory=dict)  # metrics the target brings (update_probe.py: ΔW*'s spectrum)


def build_model(cell, device, dtype):
    import torch

    from bench.spec.methods import resolve_modules
    from bench.spec.presets import build

    args = cell.task_kwargs
    model, info = build(cell.model, dtype, device, cell.trust_remote_code)
    model.eval()
    layers = {}
    for i, name in enumerate(resolve_modules(model, tuple(args["layers"]), "task_args.layers", linear_only=True)):
        weight = model.get_submodule(name).weight
        generator = torch.Generator().manual_seed(cell.seed * 1_000_003 + i)
        norm = args["delta_scale"] * weight.float().norm().item()
        change = teacher_change(*weight.shape, args["delta_rank"], args["delta_decay"], norm, generator, device)
        layers[name] = (weight.detach().clone(), change)
    ceiling = None
    if cell.method.name in LORA_METHODS:
        ceiling = top_r_energy([c for _, c in layers.values()], args, cell.method.kwargs["r"])
    energy = sum(change.pow(2).sum().item() for _, change in layers.values())
    rows = cell.batch_size * cell.seq_len
    probe = Probe(args["match"], layers, rows, args["eval_samples"], cell.seed, ceiling, energy)
    if args["match"] == "model":
        probe = _with_teacher_outputs(model, info, probe, cell, args, device, dtype)
    return model, with_data(info, probe)


# --- layers mode -----------------------------------------------------------------------------------------------
def _adapted_layers(model, probe: Probe) -> list:
    """[(module, W0, ΔW*)] of the teacher's layers in the adapted `model`, looked up once per model (a step must not
    walk the module tree): the module at each name, or at a name ending in it (peft and torch.compile prefix them)."""
    key = id(model)
    if key not in probe.modules:
        named = dict(model.named_modules())
        found = []
        for name, (w0, change) in probe.layers.items():
            hits = [m for full, m in named.items() if full == name or full.endswith("." + name)]
            if not hits:
                raise KeyError(f"the adapted model has no module {name!r}")
            found.append((hits[0], w0, change))
        probe.modules.clear()
        probe.modules[key] = found
    return probe.modules[key]


def _bias(module):
    """The bias a layer adds, whoever holds it: a Linear, this project's adapters (`.bias`), peft's (`base_layer`)."""
    return getattr(getattr(module, "base_layer", module), "bias", None)


def _layer_gap(model, probe: Probe, rows: int, seed: int, split: str = "train"):
    """Σ_l ‖x_l (ΔŴ_l − ΔW*_l)ᵀ‖² / (rows · Σ_l ‖ΔW*_l‖²_F), x_l ~ N(0, I) (rows, in_l) drawn from `seed`.

    E‖x Aᵀ‖² = rows · ‖A‖²_F for such x, so the expectation is exactly the share of ΔW*'s energy not recovered.
    With real inputs (`probe.inputs`) the denominator is the batch's own Σ_l ‖x_l ΔW*_lᵀ‖²: the share of the
    change in the layers' outputs, on the inputs they really see, that the student misses.
    """
    import torch
    import torch.nn.functional as F

    layers = _adapted_layers(model, probe)
    generator = torch.Generator(device=layers[0][1].device).manual_seed(seed)
    gap, reference = 0.0, 0.0
    for index, (module, w0, change) in enumerate(layers):
        if probe.inputs is None:
            x = torch.randn(rows, w0.shape[1], generator=generator, device=w0.device, dtype=w0.dtype)
        else:
            x = probe.inputs(index, split, rows, seed)
        learned = module(x).float() - F.linear(x, w0, _bias(module)).float()  # x ΔŴᵀ
        wanted = x.float() @ change.T
        gap = gap + (learned - wanted).pow(2).sum()
        if probe.inputs is not None:
            reference = reference + wanted.pow(2).sum()
    return gap / (rows * probe.energy) if probe.inputs is None else gap / reference


def _stream(probe: Probe, index: int) -> int:
    """The seed of stream `index` of the cell's inputs: held-out splits and training steps never share one."""
    return probe.seed * 1_000_003 + index


def _layer_batches(info: TaskInfo, batch_size: int, seq_len: int, device, seed: int):
    probe: Probe = info.data
    return lambda step: {"probe": probe, "seed": _stream(probe, 100 + step)}  # inputs drawn in the loss


# --- model mode ------------------------------------------------------------------------------------------------
def _draw_inputs(info, batch: int, seq_len: int, generator, device) -> dict:
    import torch

    if info.inputs == "images":
        shape = (batch, info.num_channels, info.image_size, info.image_size)
        return {"pixel_values": torch.randn(shape, generator=generator).to(device)}
    return {"input_ids": torch.randint(0, info.vocab_size, (batch, seq_len), generator=generator).to(device)}


def _outputs(model, inputs: dict, causal: bool, all_logits: bool = False):
    """(final hidden states float32, top-1 of the logits); a causal LM computes logits only where needed."""
    extra = {} if not causal or all_logits else {"logits_to_keep": 1}
    out = model(**inputs, output_hidden_states=True, **extra)
    return out.hidden_states[-1].float(), out.logits.argmax(-1)


def _mean_gap(a: list, b: list) -> float:
    return sum(((x - y) ** 2).sum().item() for x, y in zip(a, b)) / sum(x.numel() for x in a)


def _with_teacher_outputs(model, info, probe: Probe, cell, args: dict, device, dtype) -> Probe:
    """The probe with the teacher's (and the base's) outputs on a training pool and on held-out inputs."""
    import dataclasses

    import torch

    causal = info.head == "causal-lm"
    generator = torch.Generator().manual_seed(cell.seed * 1_000_003 + 999_983)
    pool_inputs = [_draw_inputs(info, cell.batch_size, cell.seq_len, generator, device)
                   for _ in range(args["train_batches"])]
    size, total = args["eval_batch_size"], args["eval_samples"]
    chunks = {split: [_draw_inputs(info, min(size, total - i), cell.seq_len, generator, device)
                      for i in range(0, total, size)] for split in ("val", "test")}
    with torch.no_grad():
        base = {key: [_outputs(model, x, causal)[0] for x in xs] for key, xs in {"pool": pool_inputs, **chunks}.items()}
        for name, (_, change) in probe.layers.items():
            model.get_submodule(name).weight.add_(change.to(dtype))
        teacher_pool = [_outputs(model, x, causal)[0] for x in pool_inputs]
        held = {}
        for split, xs in chunks.items():
            hidden, top1 = zip(*(_outputs(model, x, causal, all_logits=True) for x in xs))
            held[split] = Held(xs, list(hidden), list(top1), _mean_gap(base[split], hidden))
        for name, (w0, _) in probe.layers.items():
            model.get_submodule(name).weight.copy_(w0)
    pool = [{"inputs": x, "target": t} for x, t in zip(pool_inputs, teacher_pool)]
    scale = _mean_gap(base["pool"], teacher_pool)
    return dataclasses.replace(probe, pool=pool, scale=scale, val=held["val"], test=held["test"], causal=causal)


def _model_batches(info: TaskInfo, batch_size: int, seq_len: int, device, seed: int):
    probe: Probe = info.data
    return lambda step: {"probe": probe, **probe.pool[step % len(probe.pool)]}


def _held_out(model, held: Held, causal: bool) -> tuple[float, float]:
    """(output_recovered, agreement) on a held-out split."""
    gap, count, agree, positions = 0.0, 0, 0, 0
    for inputs, target, top1 in zip(held.inputs, held.teacher_hidden, held.teacher_top1):
        hidden, predicted = _outputs(model, inputs, causal, all_logits=True)
        gap += ((hidden - target) ** 2).sum().item()
        count += hidden.numel()
        agree += (predicted == top1).sum().item()
        positions += top1.numel()
    return 1.0 - gap / count / held.base_gap, agree / positions


# --- the task --------------------------------------------------------------------------------------------------
def batches(info: TaskInfo, batch_size: int, seq_len: int, device, seed: int):
    builder = _layer_batches if info.data.match == "layers" else _model_batches
    return builder(info, batch_size, seq_len, device, seed)


def loss(model, batch: dict):
    """The share of the teacher's change the student misses on this batch (1 at step 0)."""
    probe: Probe = batch["probe"]
    model.eval()  # no dropout: the teacher has none
    if probe.match == "layers":
        return _layer_gap(model, probe, probe.rows, batch["seed"])
    hidden, _ = _outputs(model, batch["inputs"], probe.causal)
    return ((hidden - batch["target"]) ** 2).mean() / probe.scale


def learned_change(module, w0):
    """ΔŴ (out, in) float32: what the student added to W0, for a plain Linear (full fine-tuning), this project's
    adapters (`delta_weight`), or any other wrapper (its response to the identity, minus its response to 0)."""
    import torch
    from torch import nn

    if type(module) is nn.Linear:  # exactly: peft's RandLora layer subclasses nn.Linear
        return module.weight.float() - w0.float()
    if callable(getattr(module, "delta_weight", None)) and hasattr(module, "base"):
        return module.delta_weight().float() + (module.base.weight.float() - w0.float())
    eye = torch.eye(w0.shape[1], dtype=w0.dtype, device=w0.device)
    return (module(eye) - module(torch.zeros_like(eye[:1]))).float().T - w0.float()


def _trainable_share(layers: list) -> float:
    """p/N: the trainable parameters inside the teacher's layers over the entries of their weights. A method with p
    free numbers recovers about p/N of a change that has no structure it can exploit (a flat, full-rank ΔW* against
    isotropic inputs): the line every probe reading is held against."""
    trainable = {id(p): p.numel() for module, _, _ in layers for p in module.parameters() if p.requires_grad}
    return sum(trainable.values()) / sum(w0.numel() for _, w0, _ in layers)


def evaluate(model, info: TaskInfo, device, seed: int) -> dict:
    import torch

    probe: Probe = info.data
    metrics: dict = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for split in ("val", "test"):
            if probe.match == "layers":
                gap = _layer_gap(model, probe, probe.eval_rows, _stream(probe, HELD_OUT_STREAM[split]), split)
                metrics[f"{split}_output_recovered"] = 1.0 - gap.item()
            else:
                recovered, agreement = _held_out(model, getattr(probe, split), probe.causal)
                metrics[f"{split}_output_recovered"], metrics[f"{split}_accuracy"] = recovered, agreement
        layers = _adapted_layers(model, probe)
        error = sum((learned_change(m, w0) - change).pow(2).sum().item() for m, w0, change in layers)
    model.train(was_training)
    metrics["delta_recovered"] = 1.0 - error / probe.energy
    metrics["delta_layers"] = len(probe.layers)
    metrics["p_over_n"] = _trainable_share(layers)
    if "test_accuracy" in metrics:
        metrics["accuracy"] = metrics["test_accuracy"]
    if probe.top_r_energy is not None:
        metrics["top_r_energy"] = probe.top_r_energy
    return {**metrics, **probe.extra}


register(
    Task(
        NAME,
        "synthetic: match a teacher = base + a known full-rank ΔW* (any preset); share of ΔW* recovered",
        batches=batches,
        loss=loss,
        evaluate=evaluate,
        build_model=build_model,
        resolve=resolve,
    )
)
