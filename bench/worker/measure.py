"""One cell, measured inside its own process: build, adapt, warm up, time the steps, count the memory.

    first step      wall clock, device drained at both ends: compilation and autotuning land here
    warm-up         the remaining warm-up steps, untimed in the result, and more while the step time has not
                    settled (`warmup.py`); the loss must be finite after them
    measured        `steps` steps, each timed on the device; allocator peaks reset just before
    breakdown       one more step, untimed, counting saved activations and gradients
    extras          a profiler trace, a matmul ceiling, the task's evaluate(), when asked for

`run` never raises: it returns the status (ok, oom, diverged, error, skipped) with a reason, a traceback for
anything unexpected, and whatever was measured before a failure.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import threading
import traceback
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

import randlora
import torch
from torch import nn

from randlora import regional
from randlora.layouts import features, is_linear

from bench.worker import compile_watch
from bench.worker import distributed
from bench.worker import memory
from bench.worker import meta_build
from bench.spec import methods
from bench.worker import metrics
from bench.worker import quantized_build
from bench.spec import presets
from bench.worker import timing
from bench.worker import warmup
from bench.spec.cells import Cell
from bench.core.errors import BenchError
from bench.spec.precision import PRECISIONS, Precision
from bench.spec.tasks import TASKS

OOM_MESSAGES = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "can't allocate memory")


@dataclass(frozen=True)
class Options:
    """How to run a cell, beyond what it is: set by the runner, not part of the cell's hash."""

    profile_dir: str | None = None  # write a torch.profiler trace here
    measure_ceiling: bool = False  # time a large matmul in the cell's precision, for MFU against a measured peak


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Unrunnable(Exception):
    """The cell cannot run here (it asks for a device this process does not have): recorded as skipped."""


def run(cell: Cell, options: Options) -> dict:
    """{'status', 'reason', 'traceback', 'train', 'memory', 'task_metrics', 'device'} for `cell`."""
    measured: dict = {"train": {}, "memory": {}, "task_metrics": {}, "device": {}}
    status, reason, trace = "ok", "", None
    try:
        _measure(cell, options, measured)
    except torch.OutOfMemoryError as exc:
        status, reason, trace = "oom", _first_line(exc), traceback.format_exc()
    except Diverged as exc:
        status, reason = "diverged", str(exc)
    except Unrunnable as exc:
        status, reason = "skipped", str(exc)
    except Exception as exc:  # noqa: BLE001 (any failure of the cell is its result, not the harness's)
        oom = any(text in str(exc) for text in OOM_MESSAGES)
        status, reason, trace = ("oom" if oom else "error"), _first_line(exc), traceback.format_exc()
    return {"status": status, "reason": reason, "traceback": trace, **measured}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _device(cell: Cell) -> torch.device:
    if cell.device == "cpu" or not torch.cuda.is_available():
        if cell.device == "cuda":
            raise Unrunnable("the cell asks for device 'cuda' and this process sees no CUDA device")
        return torch.device("cpu")
    ranks = distributed.from_environment()  # the runner exposes exactly the cell's GPUs, one per rank
    device = torch.device("cuda", ranks.local_rank if ranks else 0)
    torch.cuda.set_device(device)  # before anything touches CUDA: no context on another rank's GPU
    return device


def _device_info(device: torch.device) -> dict:
    info = {"device": device.type, "torch_cuda_version": torch.version.cuda}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["device_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["gpu_uuid"] = f"GPU-{torch.cuda.get_device_properties(device).uuid}"  # NVML's name for it
    return info


def _inject(kind: str, loss: torch.Tensor) -> torch.Tensor:
    """The fault a grid asked for with `inject:` (never active unless a grid sets it)."""
    if kind == "oom":
        raise torch.OutOfMemoryError("injected by the grid (inject: oom)")
    if kind == "error":
        raise RuntimeError("injected by the grid (inject: error)")
    if kind == "hang":
        threading.Event().wait()  # until the runner's timeout kills the process
    if kind == "nan":
        return loss * float("nan")
    return loss


def _train_step(model, optimizer, scaler, precision: Precision, task, device_type: str, inject: str, batches,
                schedule=None, grad_clip: float | None = None, window=contextlib.nullcontext):
    """One optimizer step over `batches` (its micro-batches: one forward + backward each, the loss divided by their
    number, gradients accumulated inside `window(model)`, the method's accumulation window), then gradients clipped to
    `grad_clip` and the rate `schedule` moved on; returns the mean loss, detached, still on the device (no sync)."""
    losses = []
    with window(model):
        for batch in batches:
            with precision.autocast(device_type):
                loss = _inject(inject, task.loss(model, batch))
            loss = loss / len(batches) if len(batches) > 1 else loss  # at 1: no extra kernel against older cells
            (loss if scaler is None else scaler.scale(loss)).backward()
            losses.append(loss.detach())
    if scaler is None:
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
        optimizer.step()
    else:
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    if schedule is not None:
        schedule.step()
    return losses[0] if len(losses) == 1 else torch.stack(losses).sum()


def _check_finite(losses: list[torch.Tensor], phase: str) -> None:
    finite = torch.isfinite(torch.stack(losses).float()).tolist()
    if not all(finite):
        i = finite.index(False)
        raise Diverged(f"the loss is {losses[i].item()} at {phase} step {i + 1} of {len(losses)}")


def _compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process: a rise during the measured steps means a recompile was timed."""
    from torch._dynamo.utils import counters  # private, but the only counter dynamo keeps

    return counters["stats"]["unique_graphs"]


def _graph_breaks() -> int:
    """Graph breaks dynamo has hit in this process: each one splits a compiled region into pieces run apart."""
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


@dataclass
class _Setup:
    """A cell ready to train: the adapted model, its optimizer, a step function and the batches."""

    model: nn.Module
    info: presets.ModelInfo
    optimizer: torch.optim.Optimizer
    batch: Callable[[int], dict]  # batch(i): the inputs of step i
    step: Callable[[int], torch.Tensor]  # step(i) trains on batch(i) and returns its loss, on the device
    matmul_params: int  # parameters of the base model's matmuls, for the FLOP count
    trains_base: bool  # whether those weights train (full fine-tuning)
    ranks: distributed.Ranks | None  # None: a cell of one process


def _compile_blocks(model: nn.Module) -> nn.Module:
    """compile_scope blocks: regional compilation (`randlora.regional`), refused when the model has no repeated
    blocks."""
    if not regional.compile_blocks(model):
        raise BenchError(
            f"compile_scope blocks finds no repeated blocks (an nn.ModuleList of two or more) in "
            f"{type(model).__name__}; use compile_scope: model."
        )
    return model


COMPILERS = {"model": torch.compile, "blocks": _compile_blocks}  # compile_scope -> how


def _parameter_names(model: nn.Module, module_names) -> set[str]:
    """Names of the parameters of `model` that live inside the modules named `module_names` (names from before
    adapting: peft nests a trained copy of such a module under it, e.g. base_model.model.classifier.modules_to_save)."""
    prefixes = [name + "." for name in module_names]
    return {
        name
        for name, _ in model.named_parameters()
        if any(name.startswith(prefix) or "." + prefix in name for prefix in prefixes)
    }


def _param_groups(model: nn.Module, head_names: set[str], lr: float, head_lr: float | None) -> list[dict]:
    """AdamW's parameter groups: everything that trains at `lr`, and with `head_lr` the parameters named in
    `head_names` (the trainable_modules) in a second group at that rate. Names survive FSDP2's sharding."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if head_lr is None:
        return [{"params": [p for _, p in named], "lr": lr}]
    rest = [p for name, p in named if name not in head_names]
    head = [p for name, p in named if name in head_names]
    if not head:
        raise BenchError("head_lr is set but none of the trainable_modules' parameters trains in this method.")
    return [g for g in ({"params": rest, "lr": lr}, {"params": head, "lr": head_lr}) if g["params"]]


def lr_factor(schedule: str, warmup_ratio: float, total_steps: int):
    """step -> the multiple of the base rate at that step: a linear warm-up from 0 over `warmup_ratio` of the
    steps, then constant, or a cosine / linear decay to 0 at `total_steps`."""
    warmup = math.ceil(warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress

    return factor


def _update_rank(cell: Cell, model: nn.Module, shapes: list[tuple[int, int]]) -> int:
    """The rank ΔW can reach (the largest over the adapted layers): the library's count for its own methods,
    the same rule applied to the targets' (out, in) shapes for peft's."""
    name, kwargs = cell.method.name, cell.method.kwargs
    if not name.startswith("peft-"):
        return randlora.update_rank_of(model)
    if name == "peft-randlora":
        config = randlora.RandLoRAConfig(r=kwargs["r"])
    else:  # LoRA and VeRA: ΔW factors through r dimensions
        config = randlora.LoRAConfig(r=kwargs["r"])
    return max((randlora.update_rank(config, out, inp) for out, inp in shapes), default=0)


def _build(cell: Cell, device: torch.device, precision: Precision, task, ranks) -> tuple:
    """(model, ModelInfo, MetaModel or None): a task's own model or a preset / hf: model on `device`; for a cell of
    several ranks, a preset / hf: model on the meta device, which `_distribute` materialises shard by shard."""
    if cell.quant != "none":  # linear layers quantised; a preset is never whole in float (quantized_build.py)
        return *quantized_build.build(cell, task, device, precision.param_dtype), None
    if task.build_model is not None:  # an accuracy task's pretrained model (or its teacher and probe)
        return *task.build_model(cell, device, precision.param_dtype), None
    if ranks is None:
        return *presets.build(cell.model, precision.param_dtype, device, cell.trust_remote_code), None
    if methods.METHODS[cell.method.name].init_adapters is None:
        raise BenchError(f"method {cell.method.name!r} cannot be built on the meta device; run it with gpus: 1.")
    meta = meta_build.build(cell.model, precision.param_dtype, cell.trust_remote_code)
    return meta.model, meta.info, meta


def _distribute(cell: Cell, model: nn.Module, meta, precision: Precision, device: torch.device, ranks, train: dict):
    """The adapted `model` sharded over the cell's ranks with FSDP2, after every rank proved it holds the same bases
    and buffers (train["replicated_sha256"]). A meta-device build is sharded first, then materialised."""
    distributed.init(device)
    if meta is None:  # built whole on every rank
        train["replicated_sha256"] = distributed.check_replicated(model)
        return distributed.shard(model, precision, device, ranks.world_size)
    keys = meta.checkpoint_keys(model)
    model = distributed.shard(model, precision, device, ranks.world_size)
    meta_build.materialise(meta, model, keys, device, methods.METHODS[cell.method.name].init_adapters, cell.seed)
    train["replicated_sha256"] = distributed.check_replicated(model)
    return model


def _set_up(cell: Cell, device: torch.device, precision: Precision, task, train: dict) -> _Setup:
    ranks = distributed.from_environment()
    model, info, meta = _build(cell, device, precision, task, ranks)
    base_linears = [m for m in model.modules() if is_linear(m)]  # nn.Linear, or Conv1D (GPT-2)
    trainable = methods.resolve_modules(model, cell.trainable_modules, "trainable_modules", linear_only=False)
    targets = methods.resolve_modules(model, cell.targets, "targets", linear_only=True, exclude=trainable)
    modules = dict(model.named_modules())
    shapes = [features(modules[name]) for name in targets]  # (out, in)
    kwargs = cell.method.kwargs
    if cell.basis_seed == "cell":  # the random bases vary with the seed, as the weights and batches do
        kwargs = {**kwargs, "seed": cell.seed}
    method = methods.METHODS[cell.method.name]
    if method.needs_cuda and device.type != "cuda":
        raise Unrunnable(f"method {method.name!r} runs CUDA kernels only, and this cell runs on {device.type!r}")
    model = method.adapt(model, kwargs, targets, trainable)
    model.train()
    train["update_rank"] = _update_rank(cell, model, shapes)
    matmul_params = sum(math.prod(features(m)) for m in base_linears)  # declared sizes: a packed weight's numel is not
    trains_base = any(m.weight.requires_grad for m in base_linears)
    train["trainable_params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    train["total_params"] = sum(p.numel() for p in model.parameters())
    head_names = _parameter_names(model, trainable)
    if ranks is not None:
        model = _distribute(cell, model, meta, precision, device, ranks, train)
    groups = _param_groups(model, head_names, cell.lr, cell.head_lr)  # under FSDP2: this rank's shards
    if cell.compile:
        model = COMPILERS[cell.compile_scope](model)
    optimizer = torch.optim.AdamW(groups, lr=cell.lr, fused=device.type == "cuda")
    schedule = None
    if cell.lr_schedule != "constant" or cell.lr_warmup_ratio > 0:
        factor = lr_factor(cell.lr_schedule, cell.lr_warmup_ratio, cell.warmup_steps + cell.steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scaler = precision.make_scaler(device.type)
    next_batch = task.batches(info, cell.batch_size * cell.gpus, cell.seq_len, device, cell.seed)
    if ranks is not None:
        next_batch = distributed.rank_slice(next_batch, ranks, cell.batch_size)
    inject = "none" if ranks is not None and not ranks.last else cell.inject  # a lone failing rank, the hard case

    accumulate = methods.METHODS[cell.method.name].accumulation_window
    window = contextlib.nullcontext if accumulate is None else lambda m: accumulate(m, precision.autocast_dtype)
    mb = cell.micro_batches

    def step(i: int) -> torch.Tensor:
        batches = [next_batch(i * mb + k) for k in range(mb)]
        return _train_step(
            model, optimizer, scaler, precision, task, device.type, inject, batches, schedule, cell.grad_clip, window
        )

    return _Setup(model, info, optimizer, next_batch, step, matmul_params, trains_base, ranks)


def _measure(cell: Cell, options: Options, out: dict) -> None:
    device = _device(cell)
    precision = PRECISIONS[cell.precision]
    precision.configure_backends()
    task = TASKS[cell.task]
    out["device"] = _device_info(device)
    train, mem = out["train"], out["memory"]
    torch.manual_seed(cell.seed)
    with ExitStack() as stack:
        sampler = stack.enter_context(memory.Sampler(out["device"].get("gpu_uuid")))
        stack.callback(lambda: mem.update(sampler.read()))  # also after a failure
        peaks = memory.TorchPeaks(device)
        breaks_before = _graph_breaks()
        limit_watch = stack.enter_context(compile_watch.RecompileLimitWatch())
        setup = _set_up(cell, device, precision, task, train)

        with timing.wall_clock(device, train, "first_step_s"):
            first_loss = setup.step(0)
        losses = _warm_up(setup, device, warmup.FIXED, cell.warmup_steps, train, first_loss)
        _check_finite(losses, "warm-up")

        peaks.reset()
        graphs_before = _compiled_graphs()
        timer = timing.StepTimer(device)
        losses = []
        first = train["warmup_steps_run"]
        for i in range(first, first + cell.steps):
            with timer.step():
                losses.append(setup.step(i))
        step_times = timer.times_s()
        if setup.ranks is not None:
            step_times = distributed.slowest(step_times, device)
        if task.evaluate is None:  # warm-up that leaked into the measured steps leaves the statistics
            late = warmup.settled_start(step_times)
            train["warmup_steps_run"] += late
            train["warmup_step_times_s"] = list(train["warmup_step_times_s"]) + step_times[:late]
            step_times = step_times[late:]
        train["recompiles_measured"] = _compiled_graphs() - graphs_before
        train["graph_breaks"] = _graph_breaks() - breaks_before
        train["recompile_limit_hits"] = limit_watch.hits  # set-up, warm-up and measured steps: what was timed
        _check_finite(losses, "measured")
        mem.update(peaks.read())
        train.update(_throughput(cell, setup, precision, out["device"], step_times))
        train["loss_last"] = losses[-1].item() if setup.ranks is None else distributed.mean(losses[-1].item(), device)

        # the profile before the breakdown: the breakdown's hooked passes recompile compiled blocks (and may reach
        # dynamo's recompile limit, after which blocks run eagerly), so a profile after it would not show what was timed
        if options.profile_dir:
            from bench.worker import profiling as profile

            rank = setup.ranks.rank if setup.ranks else 0  # every rank steps (collectives); each its own trace
            folder = options.profile_dir + (f"/rank{rank}" if rank else "")
            profile.trace(setup.step, device, folder, step_s=statistics.median(step_times))
        mem.update(_breakdown(setup, precision, task, device))
        if options.measure_ceiling:
            train.update(_ceiling(device, precision, train, cell.gpus))
        if task.evaluate is not None:
            out["task_metrics"] = task.evaluate(setup.model, setup.info, device, cell.seed)


def _warm_up(setup: _Setup, device: torch.device, rule, configured: int, train: dict, first_loss) -> list:
    """The losses of every warm-up step: the first (taken by the caller) and as many more as `rule` asks for; their
    times go into `train`. A loss that is not finite ends warm-up at the configured count: the cell has diverged,
    and settling its clock would not change that. Under torchrun the time and the divergence are the worst
    rank's, so every rank takes the same number of steps."""
    times, losses, clock = [], [first_loss], {}
    step_s = train["first_step_s"]
    while True:
        diverged = float(not torch.isfinite(losses[-1]).all())
        if setup.ranks is not None:
            step_s, diverged = distributed.slowest([step_s, diverged], device)
        times.append(step_s)
        if (diverged and len(times) >= configured) or not rule.another_step(times, configured):
            break
        with timing.wall_clock(device, clock, "step_s"):
            losses.append(setup.step(len(times)))
        step_s = clock["step_s"]
    train["warmup_steps_run"], train["warmup_step_times_s"] = len(times), times
    return losses


def _throughput(cell: Cell, setup: _Setup, precision: Precision, device_info: dict, step_times: list[float]) -> dict:
    """Throughput of the whole cell: the tokens of every rank over the slowest rank's step times; MFU against the
    peak of all its GPUs."""
    samples_per_step = cell.batch_size * cell.gpus * cell.micro_batches
    tokens_per_step = samples_per_step * cell.seq_len
    stats = metrics.step_stats(step_times)
    flops = metrics.model_flops_per_step(
        matmul_params=setup.matmul_params,
        tokens=tokens_per_step,
        num_layers=setup.info.num_layers,
        hidden_size=setup.info.hidden_size,
        seq_len=cell.seq_len,
        trains_base=setup.trains_base,
    )
    peak = metrics.peak_flops(device_info.get("device_name"), precision.peak_key)
    peak = peak * cell.gpus if peak else peak
    return {
        "tokens_per_step": tokens_per_step,
        "step_times_s": step_times,
        "step_time_median_s": stats.median_s,
        "step_time_p10_s": stats.p10_s,
        "step_time_p90_s": stats.p90_s,
        "measured_time_s": stats.total_s,
        "tokens_per_s": metrics.throughput(tokens_per_step, step_times),
        "tokens_per_s_per_gpu": metrics.throughput(tokens_per_step, step_times) / cell.gpus,
        "samples_per_s": metrics.throughput(samples_per_step, step_times),
        "flops_per_step": flops,
        "peak_flops": peak,
        "mfu": metrics.mfu(flops, step_times, peak),
    }


def _breakdown(setup: _Setup, precision: Precision, task, device: torch.device) -> dict:
    """Bytes of parameters, gradients, optimizer state and saved activations, from one extra untimed step."""
    with memory.SavedActivations(setup.model) as saved, precision.autocast(device.type):
        loss = task.loss(setup.model, setup.batch(0))
    loss.backward()
    grads = memory.gradient_bytes(setup.model)
    setup.optimizer.zero_grad(set_to_none=True)
    return {
        "param_bytes": memory.parameter_bytes(setup.model),
        "grad_bytes": grads,
        "optimizer_bytes": memory.optimizer_bytes(setup.optimizer),
        "activation_bytes": saved.bytes,
    }


def _ceiling(device: torch.device, precision: Precision, train: dict, gpus: int) -> dict:
    """A matmul's FLOP/s on this GPU, and the cell's model FLOP/s over that ceiling times its GPUs."""
    dtype = precision.autocast_dtype or precision.param_dtype
    ceiling = timing.matmul_flops(device, dtype, size=8192 if device.type == "cuda" else 1024)
    achieved = train["flops_per_step"] * len(train["step_times_s"]) / train["measured_time_s"]
    return {"matmul_ceiling_flops": ceiling, "mfu_vs_ceiling": achieved / (ceiling * gpus)}
