"""The report's numbers: run folders -> one frame with the columns the sections need, and the tables built from it.

Derived columns, beside bench/records/table.py's COLUMNS and the task metrics:
    run           the run folder's name (its path when two folders share a name)
    machine       the host the cell ran on
    gpu_type      the GPU's NVML name, or "CPU (<cpu name>)": the report has one section per value
    config        the method as a label ("randlora.eager r=32"), " compile" when the model was compiled, and any
                  method parameter that differs between otherwise equal labels ("alpha=320")
    variant       'field=value' for what tells apart cells that would otherwise share a pivot's cell: the run when
                  several runs hold them, and the fields that differ within one run (seed, lr, ...); such rows are
                  kept apart, never averaged. Of `task_args`, only the arguments that differ between the cells of
                  one task ("task=full-rank-probe delta_rank=4"); every argument is in task_arguments, once per task
    memory_bytes  peak_allocated_bytes on a GPU; on a CPU (no allocator peaks) records.counted_bytes: parameters +
                  gradients + optimizer state + tensors saved for backward
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.core.errors import BenchError
from bench.core.fileio import read_json
from bench.records import table
from bench.records.folder import RunFolder
from bench.records.record import Record, counted_bytes, device_class
from bench.spec.cells import Cell, MethodSpec, compile_label

# Accuracy columns in the order the report prefers them: a task's test split, then its validation, then `accuracy`.
ACCURACY_COLUMNS = ("test_accuracy", "val_accuracy", "accuracy")
# Cell fields shown in their own place (rows, columns, config) or irrelevant to the result.
SHOWN = ("model", "method", "precision", "batch_size", "seq_len", "compile", "compile_scope", "timeout_s", "device")
# What places a cell in a pivot: rows (configuration, precision) and columns (model, batch size × sequence).
TABLE_CELL = ("gpu_type", "config", "precision", "model", "batch_size", "seq_len")
LORA_METHODS = ("lora", "peft-lora")  # the LoRA reference of a ratio: this project's, else peft's


@dataclass(frozen=True)
class Runs:
    frame: pd.DataFrame  # one row per cell of each run folder (index 0..n-1)
    records: list[Record]  # the cell records, frame.index aligned
    folders: list[dict]  # per run folder: {"name", "path", "info"} with info = run.json ({} when absent)


def load(paths: list[Path]) -> Runs:
    """Every cell record of the run folders in `paths` (a folder or a file inside it, e.g. its results.parquet)."""
    folders, records, run_names = [], [], []
    names = [(p.parent if p.is_file() else p).resolve().name for p in paths]
    for path, name in zip(paths, names):
        root = path.parent if path.is_file() else path
        folder = RunFolder(root)
        if not folder.is_run_folder():
            raise BenchError(
                f"{path} is not a run folder (no {folder.cells_dir}); pass folders that `bench run` wrote."
            )
        display = name if names.count(name) == 1 else str(root)
        found = sorted(folder.records().values(), key=lambda r: (r.started_at, r.label))
        info = read_json(root / "run.json") if (root / "run.json").is_file() else {}
        folders.append({"name": display, "path": str(root), "info": info})
        records += found
        run_names += [display] * len(found)
    if not records:
        raise BenchError(f"no cell results in {', '.join(map(str, paths))}; run a grid first (python -m bench run).")
    frame = table.table(records)
    if "lr" not in frame:  # the accuracy summary compares learning rates
        frame["lr"] = pd.array([r.cell.get("lr") for r in records], dtype="Float64")
    frame["compile_scope"] = frame["compile_scope"].fillna("model")  # records from before the field
    frame["run"] = pd.array(run_names, dtype="string")
    frame["machine"] = pd.array([r.env.get("hostname") for r in records], dtype="string")
    frame["gpu_type"] = pd.array([_gpu_type(r) for r in records], dtype="string")
    frame["config"] = pd.array(_configs(records), dtype="string")
    frame["variant"] = pd.array(_variants(frame, records), dtype="string")
    cpu = frame["gpu_type"].str.startswith("CPU")
    counted = pd.array([counted_bytes(r.memory) for r in records], dtype="Int64")
    frame["memory_bytes"] = frame["peak_allocated_bytes"].where(~cpu, counted)
    return Runs(frame, records, folders)


def _gpu_type(record: Record) -> str:
    device = device_class(record)
    return f"CPU ({record.env.get('cpu_name') or 'unknown'})" if device == "cpu" else device


def _method_spec(cell: dict) -> MethodSpec:
    params = {k: v for k, v in cell["method"].items() if k != "name"}
    return MethodSpec(cell["method"]["name"], tuple(sorted(params.items())))


def _configs(records: list[Record]) -> list[str]:
    specs = [_method_spec(r.cell) for r in records]
    labels = [s.label() for s in specs]
    values: dict[tuple[str, str], set] = {}
    for label, spec in zip(labels, specs):
        for key, value in spec.params:
            values.setdefault((label, key), set()).add(json.dumps(value, sort_keys=True))
    configs = []
    for label, spec, record in zip(labels, specs, records):
        extra = [f"{k}={v}" for k, v in spec.params if len(values[(label, k)]) > 1 and f"{k}=" not in label]
        cell = record.cell
        configs.append(" ".join([label, *extra, *compile_label(cell.get("compile"), cell.get("compile_scope"))]))
    return configs


def _cell(record: Record) -> dict:
    """The record's cell, defaults filled in (records written before a field existed read as its default, so they
    do not differ from newer ones)."""
    try:
        return Cell.from_dict(record.cell).to_dict()
    except (TypeError, KeyError, ValueError):  # a record from another version of the harness: take it as written
        return dict(record.cell)


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _cell_fields(record: Record) -> dict[str, str]:
    """The record's cell fields outside SHOWN as text."""
    cell = _cell(record)
    if not cell.get("targets"):  # full fine-tuning has none: not a difference between configurations
        cell.pop("targets", None)
    return {k: _text(v) for k, v in cell.items() if k not in SHOWN}


def _task_args(cell: dict) -> dict[str, str]:
    args = cell.get("task_args") or {}
    return {k: _text(v) for k, v in args.items()} if isinstance(args, dict) else {"task_args": _text(args)}


def task_arguments(records: list[Record]) -> dict[str, dict[str, list[str]]]:
    """Per task (by name) that takes arguments: each argument with the values its cells gave it, as text, numbers by
    value first ("-": a cell without it). One value: the same in every cell of the task."""
    found: dict[str, list[dict[str, str]]] = {}
    for record in records:
        cell = _cell(record)
        found.setdefault(str(cell.get("task")), []).append(_task_args(cell))
    out = {}
    for task, cells in sorted(found.items()):
        keys = sorted({k for args in cells for k in args})
        if keys:
            out[task] = {k: sorted({args.get(k, "-") for args in cells}, key=_number_first) for k in keys}
    return out


def _number_first(text: str) -> tuple:
    """Numbers by value, then the rest as text: 4, 16, 256, null."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _differing_args(record: Record, arguments: dict[str, dict[str, list[str]]]) -> list[str]:
    """'name=value' for the record's task arguments that differ between the cells of its task (a task argument
    named like a cell field is written task_args.NAME)."""
    cell = _cell(record)
    args = _task_args(cell)
    values = arguments.get(str(cell.get("task")), {})
    return [
        f"{'task_args.' * (k in Cell.__dataclass_fields__)}{k}={args.get(k, '-')}"
        for k, found in values.items()
        if len(found) > 1
    ]


def _variants(frame: pd.DataFrame, records: list[Record]) -> list[str]:
    """Per row, 'field=value' for what tells apart cells that would otherwise share a pivot's cell (same GPU type,
    configuration, precision, model, batch size and sequence length): the run, when several runs hold such cells,
    and the cell fields that differ between such cells of one run (a seed, a learning rate). Task arguments that
    differ are written as the task and those of its arguments that differ between its cells: the rest is the same
    in every cell of that task (task_arguments)."""
    arguments = task_arguments(records)
    fields = {i: {"run": frame.at[i, "run"], **_cell_fields(records[i])} for i in frame.index}
    variants = pd.Series("", index=frame.index, dtype=object)
    for rows in frame.groupby("gpu_type").groups.values():
        needed: set[str] = set()
        for same in frame.loc[rows].groupby(list(TABLE_CELL), dropna=False).groups.values():
            if frame.loc[same, "run"].nunique() > 1:
                needed.add("run")
            for one_run in frame.loc[same].groupby("run").groups.values():
                keys = {k for i in one_run for k in fields[i]}
                needed |= {k for k in keys if len({fields[i].get(k) for i in one_run}) > 1}
        if "task_args" in needed:
            needed.add("task")  # which task's arguments
        order = ["run"] * ("run" in needed) + sorted(needed - {"run"})
        for i in rows:
            parts = []
            for k in order:
                is_args = k == "task_args"
                parts += _differing_args(records[i], arguments) if is_args else [f"{k}={fields[i].get(k, '-')}"]
            variants[i] = " ".join(parts)
    return variants.tolist()


def shared_gpu(rows: pd.DataFrame) -> pd.Series:
    """True for the rows of a run whose every cell (among `rows`) shared its GPU with others (--cells-per-gpu):
    their tokens/s and memory are not a lone cell's, so they compare for accuracy only."""
    sharing = pd.to_numeric(rows["cells_per_gpu"], errors="coerce").fillna(1) > 1
    return sharing.groupby(rows["run"]).transform("all").astype(bool)


def accuracy_columns(frame: pd.DataFrame) -> list[str]:
    """The accuracy columns that hold at least one value, in ACCURACY_COLUMNS order."""
    return [c for c in ACCURACY_COLUMNS if c in frame and pd.to_numeric(frame[c], errors="coerce").notna().any()]


def accuracy_summary(frame: pd.DataFrame) -> pd.DataFrame | None:
    """Per configuration, the test accuracy (mean ± std over seeds) at the learning rate chosen on validation: the
    accuracy tasks' own protocol, bench/views/accuracy.py, which the report only shows. None without accuracy."""
    if not accuracy_columns(frame):
        return None
    from bench.views.accuracy import summarize

    summary = summarize(frame)
    return None if summary.empty else summary


def ratio_to(frame: pd.DataFrame, value: str, methods: tuple[str, ...]) -> tuple[pd.Series, str | None]:
    """`value` of each row over that of the reference method's row with the same GPU type, model, precision, batch
    size, sequence length, compile flag and scope, and variant (which names the run when several runs hold the same
    cell). The reference is the first of `methods` that finished somewhere (of several configurations of it, the
    first by label). Returns (ratios, the reference method or None)."""
    ok = frame["status"] == "ok"
    method = next((m for m in methods if (ok & (frame["method"] == m)).any()), None)
    if method is None:
        return pd.Series(float("nan"), index=frame.index), None
    keys = ["gpu_type", "model", "precision", "batch_size", "seq_len", "compile", "compile_scope", "variant"]
    ref = frame[ok & (frame["method"] == method)].sort_values("config").drop_duplicates(keys)[keys + [value]]
    merged = frame[keys].merge(ref.rename(columns={value: "_ref"}), on=keys, how="left")
    ratio = pd.to_numeric(frame[value], errors="coerce").to_numpy(dtype=float) / pd.to_numeric(
        merged["_ref"], errors="coerce"
    ).to_numpy(dtype=float)
    return pd.Series(ratio, index=frame.index).where(ok), method


def model_order(frame: pd.DataFrame) -> list[str]:
    """Models by size (their largest total_params), unknown sizes last, then by name."""
    sizes = frame.groupby("model")["total_params"].max()

    def key(model: str) -> tuple:
        size = sizes.get(model)
        known = size is not None and not pd.isna(size)  # a model whose every cell failed early has no size
        return (not known, int(size) if known else 0, model)

    return sorted(frame["model"].dropna().unique(), key=key)


def common_batch(rows: pd.DataFrame) -> int | None:
    """The largest batch size at which the most configurations finished: where their memory compares fairly."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return None
    counts = ok.groupby("batch_size")["config"].nunique()
    return int(counts[counts == counts.max()].index.max())


def pareto_front(xs: list[float], ys: list[float]) -> list[int]:
    """Indices of the points no other point beats (x as small or smaller and y as large or larger, one of them
    strictly), ordered by x: accuracy against trainable parameters or memory."""
    front, best = [], float("-inf")
    for i in sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i])):
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front
