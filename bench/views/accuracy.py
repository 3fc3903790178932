"""Accuracy summary: per configuration, mean ± std over seeds at the learning rate chosen on validation.

    summarize(results) -> DataFrame          pure: the results table in, one row per configuration out
    python -m bench accuracy RUN_DIR         prints it and writes RUN_DIR/accuracy_summary.csv

A configuration is a task (and its arguments) × model × method (and its parameters) × precision × batch geometry
and steps: every column of CONFIG_COLUMNS, i.e. everything but `seed` and `lr`. For each learning rate of a
configuration, the selection metric (VAL_TEST[task][0]: val_accuracy; for the full-rank probe
val_output_recovered) is averaged over seeds; the learning rate with the best mean wins. Only learning rates whose
cells all ended `ok` compete (a rate that diverges for one seed is not one to recommend). The test numbers are then
reported at that learning rate — test never takes part in the choice.

Columns of the result (one row per configuration; rows of tasks without accuracy metrics are left out):
    CONFIG_COLUMNS          the configuration (task, task_args, model, method, impl, r, alpha, basis, ...)
    trainable_params        parameters the optimizer updates (median over the chosen cells)
    lr                      the chosen learning rate; null when no rate had every cell ok
    lrs                     how many learning rates were tried
    lr_edge                 "lowest" / "highest" when the chosen rate is an end of the sweep (of 2+ rates): the
                            best rate may lie beyond it, so widen the sweep before trusting the comparison
    max_stable_lr           the largest rate at which every seed trained without diverging (below any
                            diverged rate); min_diverged_lr: the smallest rate at which some seed diverged
    seeds                   cells (seeds) at the chosen rate
    failed                  cells of the configuration, any rate, that did not end ok
    select_metric           the validation metric the rate was chosen on
    val_mean, val_std       that metric at the chosen rate (std over seeds, ddof 1; null for one seed)
    metric                  the headline test metric (VAL_TEST[task][1])
    mean, std               the headline metric over seeds at the chosen rate
    samples_per_s           median over the chosen cells (throughput, like any cell)
    peak_allocated_bytes    max over the chosen cells (null on a CPU)
    wall_s                  mean wall time of a chosen cell
    <m>_mean, <m>_std       for each m of DETAIL_METRICS that some configuration has, in that order
"""

from __future__ import annotations

import math

import pandas as pd

CONFIG_COLUMNS = (
    "task", "task_args", "model", "method", "impl", "r", "alpha", "basis", "precision", "batch_size", "seq_len",
    "warmup_steps", "steps", "compile", "compile_scope", "head_lr", "n_bases", "lr_schedule", "lr_warmup_ratio",
    "grad_clip", "basis_seed", "quant",
)  # fmt: skip
DEFAULT_VAL_TEST = ("val_accuracy", "test_accuracy")
PROBE_METRICS = ("val_output_recovered", "test_output_recovered")
VAL_TEST = {"full-rank-probe": PROBE_METRICS, "update-probe": PROBE_METRICS}  # (choose on, report)
DETAIL_METRICS = (
    "test_accuracy", "test_macro_f1", "test_loss", "test_output_recovered", "delta_recovered", "top_r_energy",
    "p_over_n", "target_effective_rank", "target_stable_rank",
)  # fmt: skip
OUTPUT_COLUMNS = (
    *CONFIG_COLUMNS, "trainable_params", "update_rank", "lr", "lrs", "lr_edge", "max_stable_lr", "min_diverged_lr", "seeds", "failed", "select_metric", "val_mean",
    "val_std", "metric", "mean", "std", "samples_per_s", "peak_allocated_bytes", "wall_s",
)  # fmt: skip
COUNTS = ("trainable_params", "update_rank", "lrs", "seeds", "failed", "peak_allocated_bytes")  # Int64 columns


def val_test(task: str) -> tuple[str, str]:
    return VAL_TEST.get(task, DEFAULT_VAL_TEST)


def _std(values: pd.Series) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _stability(config: pd.DataFrame) -> dict:
    """Stability as a result: the largest rate of the sweep at which every seed trained without diverging
    (`max_stable_lr`; the top of the sweep means no divergence was found, a lower bound), and the smallest rate at
    which some seed diverged (`min_diverged_lr`; NaN: none did)."""
    diverged = config.loc[config["status"] == "diverged", "lr"]
    stable = [lr for lr, cells in config.groupby("lr") if (cells["status"] == "ok").all()]
    below = [lr for lr in stable if diverged.empty or lr < diverged.min()]
    return {
        "max_stable_lr": max(below) if below else math.nan,
        "min_diverged_lr": diverged.min() if not diverged.empty else math.nan,
    }


def _summarize_one(config: pd.DataFrame) -> dict | None:
    task = config["task"].iloc[0]
    select, headline = val_test(task)
    if select not in config.columns or config[select].isna().all():
        return None  # not an accuracy task (throughput), or nothing scored
    ok = config["status"] == "ok"
    means = {lr: cells[select].mean() for lr, cells in config.groupby("lr") if (cells["status"] == "ok").all()}
    means = {lr: m for lr, m in means.items() if not math.isnan(m)}
    row = {"lrs": config["lr"].nunique(), "failed": int((~ok).sum()), "select_metric": select, "metric": headline,
           **_stability(config)}
    if not means:
        return {**row, "lr": math.nan, "seeds": 0}
    best = max(sorted(means), key=lambda lr: means[lr])  # ties: the smallest rate
    chosen = config[config["lr"] == best]
    tried = sorted(config["lr"].dropna().unique())
    edge = "" if len(tried) < 2 else "lowest" if best == tried[0] else "highest" if best == tried[-1] else ""
    row.update(
        lr=best,
        lr_edge=edge,
        seeds=len(chosen),
        trainable_params=round(chosen["trainable_params"].median()),
        update_rank=chosen["update_rank"].median() if "update_rank" in chosen else math.nan,
        val_mean=chosen[select].mean(),
        val_std=_std(chosen[select]),
        mean=chosen[headline].mean() if headline in chosen else math.nan,
        std=_std(chosen[headline]) if headline in chosen else math.nan,
        samples_per_s=chosen["samples_per_s"].median() if "samples_per_s" in chosen else math.nan,
        peak_allocated_bytes=chosen["peak_allocated_bytes"].max() if "peak_allocated_bytes" in chosen else math.nan,
        wall_s=chosen["wall_s"].mean() if "wall_s" in chosen else math.nan,
    )
    for metric in DETAIL_METRICS:
        if metric in chosen and chosen[metric].notna().any():
            row[f"{metric}_mean"], row[f"{metric}_std"] = chosen[metric].mean(), _std(chosen[metric])
    return row


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of the accuracy cells of `results` (the results table); columns in the module
    docstring. Sorted by task, model, then trainable parameters."""
    results = results.assign(**{c: pd.NA for c in CONFIG_COLUMNS if c not in results.columns})  # older tables
    keys = list(CONFIG_COLUMNS)
    rows = []
    for values, config in results.groupby(keys, dropna=False, sort=False):
        summary = _summarize_one(config)
        if summary is not None:
            rows.append({**dict(zip(keys, values)), **summary})
    present = {k for row in rows for k in row}
    details = [f"{m}_{s}" for m in DETAIL_METRICS for s in ("mean", "std") if f"{m}_{s}" in present]
    ordered = [c for c in OUTPUT_COLUMNS if c in keys or c not in CONFIG_COLUMNS]
    frame = pd.DataFrame(rows, columns=ordered + details)
    frame = frame.astype({c: "Int64" for c in COUNTS}).astype({"lr": "float64"})
    return frame.sort_values(["task", "model", "trainable_params"], kind="stable", ignore_index=True)


def format_table(summary: pd.DataFrame) -> str:
    """The summary as aligned text: task, model, method, trainable count, chosen lr, mean ± std (headline)."""
    lines = []
    lines.append(f"{'task':<16} {'model':<11} {'method':<44} {'trainable':>10} {'lr':>8} {'seeds':>5}  "
                 "headline (test, mean ± std)")
    for row in summary.itertuples(index=False):
        method = _method_label(row)
        trainable = f"{row.trainable_params:,.0f}" if not _missing(row.trainable_params) else "-"
        lr = (f"{row.lr:.2g}" + ("*" if row.lr_edge else "")) if not _missing(row.lr) else "-"
        score = f"{row.mean:.4f} ± {row.std:.4f}" if not _missing(row.mean) else "no learning rate with every cell ok"
        failed = f"  ({row.failed} cells failed)" if row.failed else ""
        lines.append(f"{row.task:<16} {row.model:<11} {method:<44} {trainable:>10} {lr:>8} {row.seeds:>5}  "
                     f"{row.metric} {score}{failed}")
    return "\n".join(lines)


def _missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _method_label(row) -> str:
    parts = [row.method + (f".{row.impl}" if row.method == "randlora" and not _missing(row.impl) else "")]
    parts += [f"r={int(row.r)}"] if not _missing(row.r) else []
    parts += [f"alpha={row.alpha:g}"] if not _missing(row.alpha) else []
    parts += [f"basis={row.basis}"] if not _missing(row.basis) and row.basis != "uniform" else []
    n_bases = getattr(row, "n_bases", None)
    parts += [f"n_bases={int(n_bases)}"] if not _missing(n_bases) else []
    parts += [row.precision]
    quant = getattr(row, "quant", None)
    parts += [f"quant={quant}"] if not _missing(quant) and quant != "none" else []
    head_lr = getattr(row, "head_lr", None)
    parts += [f"head_lr={head_lr:g}"] if not _missing(head_lr) else []
    return " ".join(parts)


def main(run_dir) -> int:
    """`python -m bench accuracy RUN_DIR`: print the summary and write RUN_DIR/accuracy_summary.csv."""
    from pathlib import Path

    from bench.core.errors import BenchError
    from bench.core.fileio import replace_atomically
    from bench.records import table
    from bench.records.folder import RunFolder

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if folder.is_run_folder():
        results = table.table(sorted(folder.records().values(), key=lambda r: (r.started_at, r.label)))
    elif (run_dir / "results.parquet").is_file():  # a table without its cell files (a slimmed copy)
        results = pd.read_parquet(run_dir / "results.parquet")
    else:
        raise BenchError(f"{run_dir} is not a run folder (no cells/ or results.parquet); give the folder of a "
                         "`python -m bench run`.")
    summary = summarize(results)
    if summary.empty:
        raise BenchError(f"{run_dir} holds no accuracy cells (tasks: bench/README.md); nothing to summarize.")
    out = run_dir / "accuracy_summary.csv"
    replace_atomically(out, lambda tmp: summary.to_csv(tmp, index=False))
    print(format_table(summary))
    from bench.views.verdict import quant_costs, verdicts

    lines = verdicts(summary)
    if lines:
        print("\nthe rank question (test metric, mean over seeds at the rate chosen on validation):")
        print("\n".join(lines))
    lines = quant_costs(summary)
    if lines:
        print("\nthe quantised base (each method on an int8 / nf4 base against the same method on the float base):")
        print("\n".join(lines))
    edge = "; * the chosen rate is an end of its sweep (widen it)" if summary["lr_edge"].fillna("").ne("").any() else ""
    print(f"\nchosen on validation, reported on test{edge}; every column: {out}")
    return 0
