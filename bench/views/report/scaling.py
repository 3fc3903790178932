"""The report's scaling view: tokens/s per GPU against the GPU count (1, 2, 4, 8), for each method at one model.

One table per (GPU type, model) whose cells ran on at least two GPU counts: a row per configuration (method label,
precision, batch size × sequence length), a column per GPU count. Perfect scaling keeps a row flat; FSDP2's
all-gathers and reduce-scatters make it fall. A cell that did not finish shows its status (an `oom` at 4 GPUs and a
number at 8 is a result). Cells equal but for their seed or run give the median of their throughputs.

tokens/s per GPU is the record's `tokens_per_s_per_gpu`; records written before that column existed give
tokens_per_s / gpus, the same number.
"""

from __future__ import annotations

import pandas as pd

GPU_COUNTS = (1, 2, 4, 8)
ROW = ("config", "precision", "batch_size", "seq_len")  # what a row of the table is


def per_gpu(frame: pd.DataFrame) -> pd.Series:
    """tokens/s per GPU of every row (null where the cell measured none)."""
    tokens = pd.to_numeric(frame["tokens_per_s"], errors="coerce").astype("float64")
    derived = tokens / pd.to_numeric(frame["gpus"]).fillna(1).astype("float64")
    if "tokens_per_s_per_gpu" not in frame:
        return derived
    return pd.to_numeric(frame["tokens_per_s_per_gpu"], errors="coerce").astype("float64").fillna(derived)


def _value(rows: pd.DataFrame) -> str:
    """What one table cell shows: the median tokens/s per GPU of its ok rows, else the status of the first."""
    ok = rows[rows["status"] == "ok"]
    if len(ok):
        return f"{ok['per_gpu'].median():,.0f}"
    return str(rows["status"].iloc[0]) if len(rows) else ""


def tables(frame: pd.DataFrame) -> list[dict]:
    """[{"title", "columns": GPU counts, "rows": [{"label", "cells": [text per GPU count]}]}] for every (GPU type,
    model) that ran on two GPU counts or more."""
    frame = frame.assign(per_gpu=per_gpu(frame), gpus=pd.to_numeric(frame["gpus"]).fillna(1).astype(int))
    out = []
    for (gpu_type, model), cells in frame.groupby(["gpu_type", "model"], sort=True):
        counts = sorted(set(cells["gpus"]))
        if len(counts) < 2:
            continue
        columns = sorted(set(GPU_COUNTS) | set(counts))
        rows = []
        for key, group in cells.groupby(list(ROW), sort=True, dropna=False):
            config, precision, batch, seq = key
            values = [_value(group[group["gpus"] == n]) for n in columns]
            rows.append({"label": f"{config} {precision} b{batch}x{seq}", "cells": values})
        out.append({"title": f"{model} on {gpu_type}: tokens/s per GPU", "columns": columns, "rows": rows})
    return out
