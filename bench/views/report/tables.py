"""The report's tables, as plain data for the template (which escapes every string): the summary, each task's
arguments, the pivots of method × precision against model × batch size, the cells that did not finish, and each
run's environment."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from bench.views.report.data import (
    LORA_METHODS, Runs, accuracy_columns, common_batch, model_order, ratio_to, shared_gpu, task_arguments,
)  # fmt: skip


@dataclass(frozen=True)
class Value:
    """One table cell: its text, a tooltip, and a CSS class (the status of a cell that did not finish)."""

    text: str
    title: str = ""
    css: str = ""


@dataclass
class Pivot:
    title: str
    note: str
    row_names: list[str]  # the header of the row label columns
    columns: list[tuple[str, list[str]]]  # (model, [batch-size headers])
    rows: list[tuple[list[str], list[Value]]] = field(default_factory=list)


@dataclass(frozen=True)
class Metric:
    column: str
    title: str
    fmt: Callable[[float], str]


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def fmt_bytes(v: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if v >= size:
            return f"{v / size:.3g} {unit}" if v / size < 100 else f"{v / size:,.0f} {unit}"
    return f"{v:.0f} B"


def fmt_ratio(v: float) -> str:
    return f"{v:.2f}×"


def fmt_fraction(v: float) -> str:
    return f"{100 * v:.1f} %"


def metrics(frame: pd.DataFrame) -> list[Metric]:
    found = [
        Metric("tokens_per_s", "tokens/s", fmt_rate),
        Metric("memory_bytes", "peak memory", fmt_bytes),
    ]
    return found + [Metric(c, c.replace("_", " "), fmt_fraction) for c in accuracy_columns(frame)[:1]]


MEMORY_NOTE = (
    "Peak memory: torch max_memory_allocated over the measured steps on a GPU; on a CPU, where no allocator keeps "
    "peaks, parameters + gradients + optimizer state + tensors saved for backward, counted."
)


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) or not math.isfinite(float(value)) else float(value)


def _value(row: pd.Series, number: float | None, fmt) -> Value:
    if row["status"] != "ok":
        return Value(str(row["status"]).upper(), str(row["reason"] or ""), f"status-{row['status']}")
    return Value("–", "not measured") if number is None else Value(fmt(number))  # the headers name the cell


@dataclass(frozen=True)
class _Layout:
    """Where each cell of one GPU type goes: rows (configuration, precision, variant), columns (model, batch × seq)."""

    row_keys: list[tuple[str, str, str]]
    columns: list[tuple[str, list[tuple[int, int]]]]
    index: dict[tuple, int]  # (config, precision, variant, model, batch_size, seq_len) -> frame index
    with_variant: bool

    @classmethod
    def of(cls, rows: pd.DataFrame) -> _Layout:
        columns = []
        for model in model_order(rows):
            shapes = rows.loc[rows["model"] == model, ["batch_size", "seq_len"]].drop_duplicates().dropna()
            columns.append((model, sorted((int(b), int(s)) for b, s in shapes.itertuples(index=False))))
        keys = ["config", "precision", "variant"]
        row_keys = [tuple(k) for k in rows[keys].drop_duplicates().sort_values(keys).itertuples(index=False)]
        cell = rows[[*keys, "model", "batch_size", "seq_len"]]
        index = {tuple(key): i for i, key in zip(rows.index, cell.itertuples(index=False))}
        return cls(row_keys, columns, index, bool(rows["variant"].fillna("").str.len().gt(0).any()))

    def pivot(self, rows: pd.DataFrame, title: str, note: str, values: pd.Series, fmt) -> Pivot:
        names = ["configuration", "precision"] + (["variant"] if self.with_variant else [])
        header = [(model, [f"{b}×{s}" for b, s in shapes]) for model, shapes in self.columns]
        table = Pivot(title, note, names, header)
        for key in self.row_keys:
            cells = []
            for model, shapes in self.columns:
                for batch, seq in shapes:
                    i = self.index.get((*key, model, batch, seq))
                    cells.append(Value("") if i is None else _value(rows.loc[i], _number(values[i]), fmt))
            table.rows.append((list(key if self.with_variant else key[:2]), cells))
        return table


SPEED_COLUMNS = ("tokens_per_s", "memory_bytes")  # not a lone cell's when cells shared a GPU


def pivots(rows: pd.DataFrame) -> list[tuple[Pivot, Pivot | None, Pivot | None]]:
    """For each metric of one GPU type: its pivot, and the same as a ratio to LoRA and to full fine-tuning. The
    tokens/s and memory pivots leave out the runs whose every cell shared its GPU (shared_note says so)."""
    alone = rows[~shared_gpu(rows)]
    layouts = {False: _Layout.of(rows), True: _Layout.of(alone) if len(alone) else None}
    out = []
    for metric in metrics(rows):
        speed = metric.column in SPEED_COLUMNS
        layout, cells = layouts[speed], alone if speed else rows
        if layout is None:
            continue
        tables = [layout.pivot(cells, metric.title, "", cells[metric.column], metric.fmt)]
        for label, methods in (("LoRA", LORA_METHODS), ("full fine-tuning", ("full",))):
            ratio, method = ratio_to(cells, metric.column, methods)
            note = f"{metric.title} over that of {method} with the same model, precision, batch size and settings"
            title = f"{metric.title}, ratio to {label}"
            tables.append(None if method is None else layout.pivot(cells, title, note, ratio, fmt_ratio))
        out.append(tuple(tables))
    return out


def shared_note(rows: pd.DataFrame) -> str | None:
    """One line naming the cells that pivots() leaves out of the tokens/s and memory tables, None when none."""
    shared = rows[shared_gpu(rows)]
    if shared.empty:
        return None
    most = int(pd.to_numeric(shared["cells_per_gpu"], errors="coerce").max())
    runs = ", ".join(sorted(shared["run"].unique()))
    return (
        f"No tokens/s or peak memory tables for the {len(shared)} cells from {runs}: each shared its GPU with up to "
        f"{most - 1} others (--cells-per-gpu {most}), so its speed and memory are not a lone cell's."
    )


# (goal, column, pick, format): what "best" means in the summary.
GOALS = (
    ("speed", "tokens_per_s", "idxmax", lambda v: f"{fmt_rate(v)} tokens/s"),
    ("memory", "memory_bytes", "idxmin", fmt_bytes),
)


def summary(runs: Runs) -> list[dict]:
    """Per GPU type and model: the fastest configuration (any batch size), and the one with the least memory at the
    batch size most configurations finished; each with its ratio to LoRA and to full fine-tuning. Cells that shared
    their GPU (--cells-per-gpu) take no part: their speed and memory are not a lone cell's."""
    out = []
    for gpu_type, rows in runs.frame.groupby("gpu_type", sort=True):
        ratios = {(c, m): ratio_to(rows, c, m)[0] for _, c, _, _ in GOALS for m in (LORA_METHODS, ("full",))}
        for model in model_order(rows):
            ok = rows[(rows["model"] == model) & (rows["status"] == "ok") & ~shared_gpu(rows)]  # a lone cell's speed
            for goal, column, pick, fmt in GOALS:
                candidates = ok if goal == "speed" else ok[ok["batch_size"] == common_batch(ok)]
                values = candidates[column].dropna().astype(float)
                if not values.empty:
                    i = getattr(values, pick)()
                    vs = ratios[(column, LORA_METHODS)][i], ratios[(column, ("full",))][i]
                    out.append(_best(gpu_type, model, goal, rows.loc[i], fmt(values[i]), *vs))
    return out


def _best(gpu_type: str, model: str, goal: str, row: pd.Series, value: str, vs_lora, vs_full) -> dict:
    return {
        "gpu_type": gpu_type,
        "model": model,
        "goal": goal,
        "config": f"{row['config']}, {row['precision']}, batch {row['batch_size']}×{row['seq_len']}",
        "variant": row["variant"] or "",
        "value": value,
        "vs_lora": fmt_ratio(vs_lora) if _number(vs_lora) is not None else "–",
        "vs_full": fmt_ratio(vs_full) if _number(vs_full) is not None else "–",
    }


ACCURACY_COLUMNS = ("task", "model", "method", "configuration", "precision", "batch", "trainable", "update rank",
                    "lr chosen", "seeds", "validation", "test metric", "test", "on the front", "failed cells")  # fmt: skip
ACCURACY_FILTERS = ("task", "model", "method", "precision")  # the columns a reader filters the table on


def accuracy_view(summary: pd.DataFrame) -> dict:
    """accuracy_view.selected's table as the report shows it: one row per configuration at the rate chosen on
    validation, mean ± std as one cell, whether it is on the Pareto front of its task and model (on validation);
    a summary of another shape (without `label`) every column as it comes."""
    if "label" not in summary.columns:
        rows = [[_text(v) for v in r] for r in summary.itertuples(index=False)]
        return {"columns": [str(c) for c in summary.columns], "filters": [], "rows": rows}
    rows = []
    for r in summary.to_dict("records"):
        edge = " (end of sweep)" if isinstance(r.get("lr_edge"), str) and r["lr_edge"] else ""  # NaN: none chosen
        rows.append(
            [r["task"], r["model"], r["family"], r["label"], r["precision"], f"{r['batch_size']}×{r['seq_len']}",
             _text(r["trainable_params"], fmt=lambda v: f"{v:,.0f}"), _text(r.get("update_rank"), fmt=lambda v: f"{v:,.0f}"),
             _text(r["lr"], fmt=lambda v: f"{v:g}") + edge, _text(r["seeds"]), _spread(r["val_mean"], r.get("val_std")),
             _text(r["metric"]), _spread(r["mean"], r.get("std")), "yes" if r["pareto_val"] else "",
             _text(r["failed"])]
        )  # fmt: skip
    return {"columns": list(ACCURACY_COLUMNS), "filters": list(ACCURACY_FILTERS), "rows": rows}


def _text(value, missing: str = "–", fmt=str) -> str:
    return (
        missing if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) else fmt(value)
    )


def _spread(mean, std) -> str:
    if _number(mean) is None:
        return "–"
    return f"{100 * mean:.1f} %" + (f" ± {100 * std:.1f}" if _number(std) is not None else "")


def tasks(runs: Runs) -> list[dict]:
    """Per task that takes arguments: its models, its cells, and every argument, those the same in every cell of
    the task apart from those that differ (which the pivots' variant column names, "delta_rank=4")."""
    frame, out = runs.frame, []
    for task, arguments in task_arguments(runs.records).items():
        rows = frame[frame["task"].astype("string") == task] if "task" in frame else frame.iloc[:0]
        out.append(
            {
                "task": task,
                "models": ", ".join(model_order(rows)),
                "cells": len(rows),
                "same": ", ".join(f"{k}={v[0]}" for k, v in arguments.items() if len(v) == 1),
                "differ": ", ".join(f"{k} ∈ {{{', '.join(v)}}}" for k, v in arguments.items() if len(v) > 1),
            }
        )
    return out


def failures(runs: Runs) -> list[dict]:
    """Every cell that did not finish ok, with its reason and traceback."""
    frame = runs.frame
    return [
        {
            "run": frame.at[i, "run"],
            "gpu_type": frame.at[i, "gpu_type"],
            "label": frame.at[i, "label"],
            "status": frame.at[i, "status"],
            "reason": frame.at[i, "reason"] or "",
            "traceback": runs.records[i].traceback or "",
        }
        for i in frame.index[frame["status"] != "ok"]
    ]


ENV_FIELDS = (
    "hostname", "os", "python_version", "cpu_name", "cpu_count", "host_memory_bytes", "torch_version",
    "transformers_version", "peft_version", "randlora_bench_version", "git_commit", "git_dirty", "source_sha256",
    "gpu_count",
)  # fmt: skip
GPU_FIELDS = (
    "gpu_name",
    "gpu_memory_bytes",
    "driver_version",
    "cuda_driver_version",
    "power_limit_w",
    "sm_clock_max_mhz",
)


def environments(runs: Runs) -> list[dict]:
    """Per run folder: the machine (run.json), its GPUs and the CUDA build the cells saw, the command line."""
    out = []
    for folder in runs.folders:
        records = [r for r, name in zip(runs.records, runs.frame["run"]) if name == folder["name"]]
        env = folder["info"].get("env") or (records[0].env if records else {}) or {}
        fields = [(k, _env_text(k, env.get(k))) for k in ENV_FIELDS if k in env]
        builds = sorted({r.device.get("torch_cuda_version") or "" for r in records} - {""})
        fields += [("torch CUDA build", ", ".join(builds))] if builds else []
        gpus = env.get("gpus") or list(
            {g.get("gpu_uuid"): g for r in records if (g := r.env.get("gpu"))}.values()
        )
        out.append(
            {
                "run": folder["name"],
                "path": folder["path"],
                "command": " ".join(folder["info"].get("argv") or []),
                "started_at": folder["info"].get("started_at") or "",
                "fields": fields,
                "gpus": [[(k, _env_text(k, gpu.get(k))) for k in GPU_FIELDS if k in gpu] for gpu in gpus],
            }
        )
    return out


def _env_text(key: str, value) -> str:
    if value is None:
        return "–"
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return fmt_bytes(value)
    return str(value)
