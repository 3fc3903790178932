"""The table of a run: one row per cell record, COLUMNS in order with their dtypes, then the task metrics.

`results.parquet` and `results.csv` of a run folder (bench/records/folder.py) are this table, rebuilt from the
cell files; `pandas.read_parquet` loads it. Every column says where in the record it comes from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bench.core.fileio import replace_atomically
from bench.records.folder import RunFolder
from bench.records.record import Record
from bench.spec.cells import HASHED_IF_SET


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # pandas dtype: string, Int64, float64, boolean
    path: tuple[str, ...]  # where in the record
    doc: str


def _c(name: str, dtype: str, path: str, doc: str) -> Column:
    return Column(name, dtype, tuple(path.split(".")), doc)


COLUMNS: tuple[Column, ...] = (
    _c("cell_hash", "string", "cell_hash", "SHA-256 prefix of the resolved cell (all fields but timeout_s)"),
    _c("label", "string", "label", "a readable name of the cell"),
    _c("status", "string", "status", "ok | oom | error | timeout | diverged | skipped"),
    _c("reason", "string", "reason", "why, for any status but ok (one line; the record keeps the traceback)"),
    _c("model", "string", "cell.model", "preset name or hf:<path>"),
    _c(
        "method",
        "string",
        "cell.method.name",
        "full | lora | randlora | peft-lora | peft-lora-liger | peft-randlora | peft-vera",
    ),
    _c(
        "impl",
        "string",
        "cell.method.impl",
        "the method's implementation (eager | compiled | sparse | semi_structured); null for peft",
    ),
    _c("r", "Int64", "cell.method.r", "the adapter rank; null for full fine-tuning"),
    _c("alpha", "float64", "cell.method.alpha", "the adapter's alpha (scaling = alpha / r)"),
    _c("basis", "string", "cell.method.basis", "RandLoRA's basis distribution"),
    _c("precision", "string", "cell.precision", "fp32 | tf32 | bf16 | fp16-amp | bf16-amp"),
    _c("quant", "string", "cell.quant", "the frozen base's storage: none | int8 | nf4 (bitsandbytes); null: none"),
    _c("batch_size", "Int64", "cell.batch_size", "samples per step"),
    _c("seq_len", "Int64", "cell.seq_len", "tokens per sample"),
    _c("micro_batches", "Int64", "cell.micro_batches", "forward + backward passes per optimizer step; null: 1"),
    _c("warmup_steps", "Int64", "cell.warmup_steps", "untimed steps, the first included"),
    _c("steps", "Int64", "cell.steps", "timed steps"),
    _c("seed", "Int64", "cell.seed", "seed of weights and batches"),
    _c("task", "string", "cell.task", "what the cell trained on"),
    _c("task_args", "string", "cell.task_args", "the task's arguments, defaults filled in, as JSON (sorted keys)"),
    _c("lr", "float64", "cell.lr", "AdamW learning rate"),
    _c("head_lr", "float64", "cell.head_lr", "learning rate of the trainable_modules; null: lr"),
    _c("lr_schedule", "string", "cell.lr_schedule", "constant | cosine | linear over all steps; null: constant"),
    _c("lr_warmup_ratio", "float64", "cell.lr_warmup_ratio", "share of the steps in a linear warm-up; null: 0"),
    _c("grad_clip", "float64", "cell.grad_clip", "max global gradient norm; null: no clipping"),
    _c("basis_seed", "string", "cell.basis_seed", "'cell': RandLoRA's bases from the cell's seed; null: seed 0"),
    _c("n_bases", "Int64", "cell.method.n_bases", "RandLoRA's number of bases per layer; null: ceil(d / r)"),
    _c(
        "update_rank",
        "Int64",
        "train.update_rank",
        "the rank ΔW can reach, largest over the adapted layers: min(d, n·r) RandLoRA, r LoRA, d full",
    ),
    _c("compile", "boolean", "cell.compile", "whether the whole model was torch.compile'd"),
    _c("compile_scope", "string", "cell.compile_scope", "with compile: model (all at once) or blocks (each block)"),
    _c("inject", "string", "cell.inject", "a fault the grid injected on purpose, else none"),
    _c("gpus", "Int64", "cell.gpus", "GPUs the cell asked for: N > 1 is N ranks under torchrun with FSDP2"),
    _c("trainable_params", "Int64", "train.trainable_params", "parameters the optimizer updates"),
    _c("total_params", "Int64", "train.total_params", "all parameters of the adapted model"),
    _c("tokens_per_step", "Int64", "train.tokens_per_step", "batch_size × seq_len × micro_batches (× gpus)"),
    _c("tokens_per_s", "float64", "train.tokens_per_s", "Σ tokens / Σ measured step time"),
    _c("tokens_per_s_per_gpu", "float64", "train.tokens_per_s_per_gpu", "tokens_per_s / gpus: the scaling view's"),
    _c("samples_per_s", "float64", "train.samples_per_s", "Σ samples / Σ measured step time"),
    _c("step_time_median_s", "float64", "train.step_time_median_s", "median device time of a measured step"),
    _c("step_time_p10_s", "float64", "train.step_time_p10_s", "10th percentile"),
    _c("step_time_p90_s", "float64", "train.step_time_p90_s", "90th percentile"),
    _c("measured_time_s", "float64", "train.measured_time_s", "Σ measured step time"),
    _c("first_step_s", "float64", "train.first_step_s", "wall clock of the first step (compilation included)"),
    _c("warmup_steps_run", "Int64", "train.warmup_steps_run",
       "steps counted as warm-up: warmup_steps, plus leading measured steps still slower than the rest (bench/worker/warmup.py)"),
    _c(
        "recompiles_measured",
        "Int64",
        "train.recompiles_measured",
        "graphs compiled during measured steps (should be 0)",
    ),
    _c("graph_breaks", "Int64", "train.graph_breaks",
       "graph breaks dynamo hit in this cell (0 when every compiled region is one graph; more: pieces run apart)"),
    _c("recompile_limit_hits", "Int64", "train.recompile_limit_hits",
       "times dynamo reached its recompile limit before the cell's timing ended (more than 0: code ran eagerly after)"),
    _c("flops_per_step", "float64", "train.flops_per_step", "model FLOPs of a step (metrics.model_flops_per_step)"),
    _c("peak_flops", "float64", "train.peak_flops", "the GPU's datasheet peak for the precision; null if unknown"),
    _c("mfu", "float64", "train.mfu", "achieved model FLOP/s over peak_flops"),
    _c("matmul_ceiling_flops", "float64", "train.matmul_ceiling_flops", "measured matmul FLOP/s (--measure-ceiling)"),
    _c("mfu_vs_ceiling", "float64", "train.mfu_vs_ceiling", "achieved model FLOP/s over the measured ceiling"),
    _c("loss_last", "float64", "train.loss_last", "the loss of the last measured step"),
    # of one GPU: a cell of N ranks records the largest rank's (bench.worker.distributed.merge_memory)
    _c("peak_allocated_bytes", "Int64", "memory.peak_allocated_bytes", "torch max_memory_allocated, measured steps"),
    _c("peak_reserved_bytes", "Int64", "memory.peak_reserved_bytes", "torch max_memory_reserved, measured steps"),
    _c("cell_peak_allocated_bytes", "Int64", "memory.cell_peak_allocated_bytes", "max_memory_allocated, whole cell"),
    _c("cell_peak_reserved_bytes", "Int64", "memory.cell_peak_reserved_bytes", "max_memory_reserved, whole cell"),
    _c("nvml_peak_bytes", "Int64", "memory.nvml_peak_bytes", "device memory NVML charged to the cell's process"),
    _c("nvml_device_peak_bytes", "Int64", "memory.nvml_device_peak_bytes", "device memory in use on the GPU (NVML)"),
    _c("host_rss_peak_bytes", "Int64", "memory.host_rss_peak_bytes", "resident host memory of the cell's process"),
    _c("param_bytes", "Int64", "memory.param_bytes", "all parameters"),
    _c("grad_bytes", "Int64", "memory.grad_bytes", "gradients after a backward"),
    _c("optimizer_bytes", "Int64", "memory.optimizer_bytes", "optimizer state"),
    _c(
        "activation_bytes",
        "Int64",
        "memory.activation_bytes",
        "distinct tensors saved for backward, parameters excluded",
    ),
    _c(
        "accuracy",
        "float64",
        "task_metrics.accuracy",
        "an accuracy task's test accuracy (= test_accuracy; bench/spec/tasks/); null for throughput",
    ),
    _c("device", "string", "device.device", "cuda | cpu"),
    _c("gpu_name", "string", "env.gpu.gpu_name", "the cell's GPU (NVML; rank 0's, env.gpus lists every rank's)"),
    _c("gpu_uuid", "string", "env.gpu.gpu_uuid", ""),
    _c("gpu_memory_bytes", "Int64", "env.gpu.gpu_memory_bytes", ""),
    _c("gpu_count", "Int64", "env.gpu_count", "GPUs the cell ran on (0 on a CPU); run.json has the machine's"),
    _c("driver_version", "string", "env.gpu.driver_version", ""),
    _c("cuda_version", "string", "device.torch_cuda_version", "CUDA torch was built with"),
    _c("power_limit_w", "float64", "env.gpu.power_limit_w", ""),
    _c("sm_clock_max_mhz", "Int64", "env.gpu.sm_clock_max_mhz", ""),
    _c("gpu_busy", "boolean", "run.gpu_busy", "another process held memory on the GPU when the cell started"),
    _c(
        "cells_per_gpu",
        "Int64",
        "run.cells_per_gpu",
        "cells the run let share one GPU (--cells-per-gpu); above 1, throughput and memory are not a lone cell's",
    ),
    _c("cpu_name", "string", "env.cpu_name", ""),
    _c("torch_version", "string", "env.torch_version", ""),
    _c("transformers_version", "string", "env.transformers_version", ""),
    _c("peft_version", "string", "env.peft_version", ""),
    _c("git_commit", "string", "env.git_commit", ""),
    _c("git_dirty", "boolean", "env.git_dirty", "tracked files differed from the commit"),
    _c("source_sha256", "string", "env.source_sha256", "digest of the randlora and bench sources that ran"),
    _c("run_name", "string", "run.run_name", ""),
    _c("started_at", "string", "run.started_at", "ISO 8601, UTC"),
    _c("wall_s", "float64", "run.wall_s", "wall time of the cell's process, start to result"),
)


def _get(record: dict, path: tuple[str, ...]):
    value = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _scalar(value):
    """A mapping or list as canonical JSON text, so that it fits one cell of the table."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value


def _fitted(value, dtype: str):
    """`value`, or null where an integer column cannot hold it (a seed of 2**70 in a record written before seeds
    were bounded): one odd value must not cost the whole table."""
    if dtype == "Int64" and isinstance(value, int) and not -(2**63) <= value < 2**63:
        return None
    return value


def _later_default(value, path: tuple[str, ...]):
    """A cell field added after older records were written reads as its default in them (e.g. `quant` is "none"
    in a record from before the field), so that old and new cells of one configuration group together."""
    if value is None and len(path) == 2 and path[0] == "cell" and isinstance(HASHED_IF_SET.get(path[1]), (str, int, float)):
        return HASHED_IF_SET[path[1]]
    return value


def table(records: list[Record]):
    """A pandas DataFrame, one row per record, COLUMNS in order with their dtypes, then task metric columns."""
    import pandas as pd

    dicts = [r.to_dict() for r in records]
    rows = [{c.name: _fitted(_scalar(_later_default(_get(r, c.path), c.path)), c.dtype) for c in COLUMNS}
            for r in dicts]
    extra: list[str] = []
    for row, record in zip(rows, records):
        for key, value in record.task_metrics.items():
            if key not in row:
                extra += [key] if key not in extra else []
                row[key] = value
    frame = pd.DataFrame(rows, columns=[c.name for c in COLUMNS] + extra)
    return frame.astype({c.name: c.dtype for c in COLUMNS})


def write_table(folder: RunFolder, records: list[Record] | None = None) -> tuple[Path, Path]:
    """results.parquet and results.csv from every record in the folder (or `records`, already read from it), each
    written atomically; their paths."""
    records = sorted(folder.records().values() if records is None else records, key=lambda r: (r.started_at, r.label))
    frame = table(records)  # rows in the order the cells ran
    parquet, csv = folder.table_paths()
    replace_atomically(parquet, lambda tmp: frame.to_parquet(tmp, index=False))
    replace_atomically(csv, lambda tmp: frame.to_csv(tmp, index=False))
    return parquet, csv


def remove_tables(folder: RunFolder) -> None:
    """Remove the folder's tables while cells change, so that no table older than its cell files is left."""
    for path in folder.table_paths():
        path.unlink(missing_ok=True)
