"""The report's verdict: each RandLoRA variant against named baselines, as ratios with their range over runs and seeds.

    group       GPU type × model × batch size × sequence length × precision × task × the frozen base's storage
                (`quant`) × micro-batches per step: only cells that share all eight compare (the title names the
                task unless it is the throughput task, a quantised base, and micro-batches above one)
    variant     a RandLoRA configuration (method randlora: impl, compiled or not, its parameters), the frame's `config`
    baselines   our LoRA (lora), peft LoRA (peft-lora), peft LoRA on Liger's kernels (peft-lora-liger), full
                fine-tuning (full), peft RandLora (peft-randlora), each
                eager, compiled (whole model) and compiled per block where measured; cells of one baseline with
                different settings (rank, ...) are pooled into its range
    ratio       variant / baseline of tokens/s, of peak memory (`memory_bytes`) and of accuracy where both have it:
                median(variant) / median(baseline), range min(variant) / max(baseline) .. max / min over every run and
                seed of either; a range that holds 1.0 is a "tie" (one cell per side: the range is the ratio itself)
    accuracy    only the cells at each configuration's learning rate chosen on validation (the best mean of
                `val_accuracy` over seeds), as the accuracy summary reports them, never every rate of a sweep
    sharing     a group whose every cell shared its GPU (--cells-per-gpu) compares accuracy only: its speed and
                memory are not a lone cell's
    sentence    the headline group (the one with the most cells among those that measured both peft LoRA and full
                fine-tuning, else one of them, else any), the plain
                RandLoRA variant (eager impl, not compiled, shortest label) against peft LoRA and full fine-tuning
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

GROUP = ("gpu_type", "model", "batch_size", "seq_len", "precision", "task", "quant", "micro_batches")
DEFAULTS = {"quant": "none", "micro_batches": 1}  # what a frame from before these fields were recorded means
BASELINES = {"lora": "our LoRA", "peft-lora": "peft LoRA", "peft-lora-liger": "peft LoRA + Liger", "full": "full fine-tuning",
             "peft-randlora": "peft RandLora"}
HEADLINE = ("peft-lora", "full")  # the baselines the verdict's sentence names
METRICS = (("tokens_per_s", "tokens/s"), ("memory_bytes", "memory"))


@dataclass(frozen=True)
class Ratio:
    median: float
    low: float
    high: float

    @property
    def tie(self) -> bool:
        return self.low <= 1.0 <= self.high

    def text(self) -> str:
        spread = f" ({self.low:.2f}–{self.high:.2f})" if self.high - self.low >= 0.005 else ""
        return f"×{self.median:.2f}{spread}{' tie' if self.tie else ''}"


def ratio(variant: pd.Series, baseline: pd.Series) -> Ratio | None:
    """median(variant) / median(baseline), with the range the extremes allow; None when either side is empty."""
    v, b = pd.to_numeric(variant, errors="coerce").dropna(), pd.to_numeric(baseline, errors="coerce").dropna()
    v, b = v[v > 0], b[b > 0]
    if v.empty or b.empty:
        return None
    return Ratio(float(v.median() / b.median()), float(v.min() / b.max()), float(v.max() / b.min()))


def _compiled(row) -> str:
    if not row["compile"]:
        return "eager"
    return "compiled" if row["compile_scope"] == "model" else f"compiled ({row['compile_scope']})"


def _accuracy_column(frame: pd.DataFrame) -> str | None:
    for name in ("test_accuracy", "accuracy"):
        if name in frame and frame[name].notna().any():
            return name
    return None


def groups(frame: pd.DataFrame) -> list[dict]:
    """Per group: {"key": its five values, "baselines": names, "rows": [{"variant", "cells", ...}]}; a row's
    cells: per baseline, a list of {"label", "text", "tie"} (one per metric both sides measured)."""
    ok = frame[(frame["status"] == "ok") & frame["tokens_per_s"].notna()].copy()
    if ok.empty:
        return []
    ok["compile"] = ok["compile"].fillna(False).astype(bool)
    for column, default in DEFAULTS.items():
        ok[column] = ok[column].fillna(default) if column in ok else default
    ok["mode"] = ok.apply(_compiled, axis=1)
    accuracy = _accuracy_column(ok)
    chosen = _at_chosen_rate(ok) if accuracy else ok
    found = []
    for key, rows in ok.groupby(list(GROUP), sort=True, dropna=False):
        shared = bool((pd.to_numeric(rows["cells_per_gpu"], errors="coerce").fillna(1) > 1).all())
        metrics = (() if shared else METRICS) + (((accuracy, "accuracy"),) if accuracy else ())
        if not metrics:
            continue
        variants = rows[rows["method"] == "randlora"]
        present = [
            (method, mode)
            for method in BASELINES
            for mode in sorted(rows.loc[rows["method"] == method, "mode"].unique(), key=lambda m: (m != "eager", m))
        ]
        if variants.empty or not present:
            continue
        table = []
        for config, cells in sorted(variants.groupby("config"), key=lambda item: (len(item[0]), item[0])):
            texts, ratios = [], {}
            for method, mode in present:
                base = rows[(rows["method"] == method) & (rows["mode"] == mode)]
                parts = {
                    label: ratio(_pick(cells, chosen, label)[column], _pick(base, chosen, label)[column])
                    for column, label in metrics
                }
                ratios[(method, mode)] = parts
                texts.append([{"label": label, "text": r.text(), "tie": r.tie} for label, r in parts.items() if r])
            table.append({"variant": config, "cells": texts, "ratios": ratios, "plain": _plain(cells)})
        found.append(
            {
                "key": dict(zip(GROUP, key)),
                "title": _title(dict(zip(GROUP, key))),
                "baselines": [f"{BASELINES[m]} {mode}" for m, mode in present],
                "rows": table,
                "cells": len(rows),
            }
        )
    return found


def _title(key: dict) -> str:
    task, quant, micro = key["task"], key["quant"], int(key["micro_batches"])
    return (f"{key['gpu_type']} · {key['model']} · b{key['batch_size']}×{key['seq_len']} · {key['precision']}"
            + ("" if task in ("throughput", None) or pd.isna(task) else f" · {task}")
            + ("" if quant == "none" else f" · {quant} base")
            + ("" if micro == 1 else f" · {micro} micro-batches"))


def _at_chosen_rate(frame: pd.DataFrame) -> pd.DataFrame:
    """The cells at each configuration's rate chosen on validation (best mean `val_accuracy` over seeds); a
    frame without validation scores is returned whole."""
    if "val_accuracy" not in frame or frame["val_accuracy"].isna().all():
        return frame
    keys = [c for c in (*GROUP, "task", "config") if c in frame]
    keep = []
    for _, cells in frame.groupby(keys, dropna=False, sort=False):
        means = cells.groupby("lr", dropna=False)["val_accuracy"].mean().dropna()
        keep.append(cells[cells["lr"] == means.idxmax()] if not means.empty else cells)
    return pd.concat(keep) if keep else frame


def _pick(cells: pd.DataFrame, chosen: pd.DataFrame, label: str) -> pd.DataFrame:
    """For accuracy, the cells among `cells` that sit at their configuration's chosen rate."""
    return cells[cells.index.isin(chosen.index)] if label == "accuracy" else cells


def _plain(cells: pd.DataFrame) -> bool:
    return bool((~cells["compile"]).all() and (cells["impl"] == "eager").all())


def sentence(found: list[dict]) -> str:
    """One sentence: the plain RandLoRA of the headline group against peft LoRA and full fine-tuning."""
    def weight(group: dict) -> tuple:  # the groups that measured both named baselines first, then the fullest
        named = sum(any(b.startswith(BASELINES[m] + " ") for b in group["baselines"]) for m in HEADLINE)
        return -named, -group["cells"], group["title"]

    for group in sorted(found, key=weight):
        for row in sorted(group["rows"], key=lambda r: (not r["plain"], len(r["variant"]))):
            named = [(m, row["ratios"].get((m, "eager"))) for m in HEADLINE]
            accuracy_only = [(m, parts) for m, parts in named if parts and parts.get("accuracy") and not parts.get("tokens/s")]
            named = [(m, parts) for m, parts in named if parts and parts.get("tokens/s")]
            if accuracy_only and not named:
                said = [f"{parts['accuracy'].text()} the accuracy of {BASELINES[m]}" for m, parts in accuracy_only]
                return (f"On {group['title']}, RandLoRA ({row['variant']}) reaches {' and '.join(said)} at the rates "
                        "chosen on validation (its cells shared a GPU: accuracy only).")
            if not named:
                continue
            said = [
                f"{parts['tokens/s'].text()} the tokens/s of {BASELINES[m]}"
                + (f" at {parts['memory'].text()} its peak memory" if parts.get("memory") else "")
                for m, parts in named
            ]
            return f"On {group['title']}, RandLoRA ({row['variant']}) runs at {' and '.join(said)} (eager baselines)."
    if found:
        return "No group has RandLoRA beside an eager peft LoRA or full fine-tuning; the ratios to what was measured:"
    return "No group has RandLoRA and a baseline measured with the same GPU, model, batch, sequence and precision."
