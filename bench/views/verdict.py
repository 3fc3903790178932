"""The rank question, answered per task from the accuracy summary (bench/views/accuracy.py):

    gap       full fine-tuning − LoRA (r ≤ 8, the largest such rank measured), test metric, mean over seeds, with
              its standard error √(s_full²/n_full + s_lora²/n_lora); a gap counts only beyond two standard errors
    share     at equal parameters (the RandLoRA row of full rank whose trainable count is closest to that LoRA's):
              (RandLoRA − LoRA) / (full − LoRA), the share of the gap the full-rank update closes
    rank      the rows that fix RandLoRA's number of bases (`n_bases`) at one budget, ordered by the rank ΔW can
              reach: the metric at each rank, and the highest rank against the lowest (beyond two SE or not)
    verdict   "reproduces the paper" when RandLoRA beats LoRA at equal parameters beyond two SE where a gap exists,
              "contradicts the paper" when LoRA beats RandLoRA so, else "unresolved at this noise" (a tie, or no gap)

    quantised (a run whose rows differ in `quant`) the rank question is asked of the float-base rows; each method's
              int8 / nf4 rows are then set against its float-base row: the accuracy cost of the quantised base

    probes    (full-rank-probe, update-probe) the share of the target each method reproduces beside its honest
              reference: p/N (what p free numbers recover of a change with no structure) and, for LoRA, the best any
              rank-r update can do (`top_r_energy`, Eckart-Young)

Every number is the test metric at the learning rate chosen on validation (the summary's `mean`, `std`, `seeds`).
A task run with several `task_args` (the synthetic probe's target ranks) gets its lines per argument set.
"""

from __future__ import annotations

import math

import pandas as pd

LORA_MAX_RANK = 8  # "LoRA falls short": the gap is measured against LoRA at r <= 8, as the question is asked
PROBES = ("full-rank-probe", "update-probe")
MATCH_TOLERANCE = 0.15  # a probe's LoRA row is set beside a RandLoRA row only within ±15 % of its trainable count


def _se(row) -> float:
    return float(row["std"]) / math.sqrt(row["seeds"]) if row["seeds"] and row["seeds"] > 1 else math.nan


def _diff(a, b) -> tuple[float, float]:
    """(a − b, its standard error)."""
    return float(a["mean"]) - float(b["mean"]), math.sqrt(_se(a) ** 2 + _se(b) ** 2)


def _beyond(diff: float, se: float) -> bool:
    return not math.isnan(se) and abs(diff) > 2 * se


def _fmt(diff: float, se: float) -> str:
    return f"{diff:+.4f} ± {2 * se:.4f} (2 SE)"


def task_verdict(rows: pd.DataFrame, args: str = "") -> list[str]:
    """The lines for one task (the summary's rows of that task and model, and of one `task_args` where told)."""
    task, model = rows["task"].iloc[0], rows["model"].iloc[0]
    ok = rows[rows["seeds"].fillna(0) > 0]
    metric = ok["metric"].iloc[0] if len(ok) else "metric"
    head = f"{task}{' ' + args if args else ''} ({model}, {metric})"
    probe = _probe_lines(ok) if task in PROBES else []
    full = ok[ok["method"] == "full"]
    lora = ok[(ok["method"] == "lora") & (ok["r"] <= LORA_MAX_RANK)]
    has_bases = "n_bases" in ok.columns
    rand = ok[(ok["method"] == "randlora") & (ok["n_bases"].isna() if has_bases else True)]
    if full.empty or lora.empty:
        missing = " or ".join(name for name, rows in (("full fine-tuning", full), (f"LoRA (r <= {LORA_MAX_RANK})", lora))
                              if rows.empty)
        return [f"{head}: no {missing} row; the question needs both full fine-tuning and LoRA.", *probe]
    full_row = full.iloc[0]
    lora_row = lora.sort_values("r").iloc[-1]
    gap, gap_se = _diff(full_row, lora_row)
    lines = [f"{head}: full − LoRA r{int(lora_row['r'])} = {_fmt(gap, gap_se)}"
             + ("" if _beyond(gap, gap_se) else "  (not beyond two standard errors)")]
    verdict = "unresolved at this noise: no gap between LoRA and full fine-tuning beyond two standard errors"
    if not rand.empty:
        match = rand.iloc[(rand["trainable_params"] - lora_row["trainable_params"]).abs().argsort()].iloc[0]
        diff, diff_se = _diff(match, lora_row)
        share = diff / gap if gap else math.nan
        lines.append(
            f"  RandLoRA r{int(match['r'])} ({int(match['trainable_params']):,} trainable) − LoRA "
            f"r{int(lora_row['r'])} ({int(lora_row['trainable_params']):,}) = {_fmt(diff, diff_se)}: "
            f"closes {share:.0%} of the gap at equal parameters"
        )
        if _beyond(gap, gap_se):
            if _beyond(diff, diff_se):
                verdict = ("reproduces the paper: at equal parameters the full-rank update recovers part of the gap"
                           if diff > 0 else "contradicts the paper: LoRA beats RandLoRA at equal parameters")
            else:
                verdict = "unresolved at this noise: RandLoRA and LoRA tie at equal parameters within two standard errors"
    lines += _rank_lines(ok, lora)
    lines += probe
    lines.append(f"  verdict: {verdict}")
    return lines


def _probe_lines(ok: pd.DataFrame) -> list[str]:
    """Each LoRA row against its rank-r ceiling, and the RandLoRA row (default bases) of the nearest count, with
    p/N beside both: a probe's reading is only as honest as its references."""
    if "p_over_n_mean" not in ok.columns:
        return []
    lines = []
    rand = ok[(ok["method"] == "randlora") & (ok["n_bases"].isna() if "n_bases" in ok.columns else True)]
    for _, lora in ok[ok["method"] == "lora"].sort_values("r").iterrows():
        ceiling = lora.get("top_r_energy_mean", math.nan)
        line = (f"  LoRA r{int(lora['r'])} (p/N {lora['p_over_n_mean']:.3f}): {lora['mean']:.4f} ± {lora['std']:.4f}"
                f", its rank-{int(lora['r'])} ceiling {ceiling:.4f}")
        near = rand[(rand["trainable_params"] / lora["trainable_params"] - 1).abs() <= MATCH_TOLERANCE]
        if not near.empty:
            match = near.iloc[(near["trainable_params"] - lora["trainable_params"]).abs().argsort()].iloc[0]
            diff, se = _diff(match, lora)
            line += (f"; RandLoRA r{int(match['r'])} (p/N {match['p_over_n_mean']:.3f}): {match['mean']:.4f} ± "
                     f"{match['std']:.4f}, RandLoRA − LoRA = {_fmt(diff, se)}")
        lines.append(line)
    return lines


def _rank_lines(ok: pd.DataFrame, lora: pd.DataFrame) -> list[str]:
    if "n_bases" not in ok.columns or "update_rank" not in ok.columns:
        return []
    lines = []
    for n_bases, group in ok[ok["n_bases"].notna()].groupby("n_bases"):
        group = group.sort_values("update_rank")
        if len(group) < 2:
            continue
        counts = group["trainable_params"]
        points = ", ".join(f"rank {int(r['update_rank'])}: {r['mean']:.4f} ± {r['std']:.4f}" for _, r in group.iterrows())
        low, high = group.iloc[0], group.iloc[-1]
        diff, se = _diff(high, low)
        trend = ("rises" if diff > 0 else "falls") if _beyond(diff, se) else "does not move beyond two SE"
        lines.append(
            f"  update rank at a fixed budget (RandLoRA, n_bases {int(n_bases)}, {int(counts.min()):,}–"
            f"{int(counts.max()):,} trainable): {points}; rank {int(high['update_rank'])} − rank "
            f"{int(low['update_rank'])} = {_fmt(diff, se)}: accuracy {trend} with the update's rank"
        )
        near = lora.iloc[(lora["trainable_params"] - counts.median()).abs().argsort()]
        if len(near):
            row = near.iloc[0]
            lines.append(f"  (LoRA r{int(row['r'])} at {int(row['trainable_params']):,} trainable, rank "
                         f"{int(row['r'])}: {row['mean']:.4f} ± {row['std']:.4f})")
    return lines


def differing_args(column: pd.Series) -> dict[str, str]:
    """{task_args as text: "name=value ..." of only the arguments that differ between the column's values}."""
    import json

    parsed = {}
    for value in column.astype(str).unique():
        try:
            parsed[value] = json.loads(value) if value.startswith("{") else {}
        except ValueError:
            parsed[value] = {}
    names = sorted({k for args in parsed.values() for k in args})
    varying = [k for k in names if len({json.dumps(args.get(k), sort_keys=True) for args in parsed.values()}) > 1]
    return {value: " ".join(f"{k}={json.dumps(args.get(k))}" for k in varying) for value, args in parsed.items()}


def _float_base(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows on a float (unquantised) base: the rank question compares methods on the same base."""
    if "quant" not in summary.columns:
        return summary
    return summary[summary["quant"].fillna("none") == "none"]


def quant_costs(summary: pd.DataFrame) -> list[str]:
    """Each quantised row against the float-base row of the same configuration (all else equal): quantised − float,
    ± two standard errors, and whether the cost is beyond them. Empty when no row is quantised."""
    if "quant" not in summary.columns or summary["quant"].fillna("none").eq("none").all():
        return []
    summary = summary.assign(quant=summary["quant"].fillna("none"))
    keys = [c for c in ("task", "task_args", "model", "method", "impl", "r", "alpha", "basis", "n_bases", "precision")
            if c in summary.columns]
    lines = []
    for _, group in summary.groupby(keys, dropna=False, sort=False):
        base = group[group["quant"] == "none"]
        for _, row in group[group["quant"] != "none"].iterrows():
            name = f"{row['task']} {row['method']}" + (f" r{int(row['r'])}" if not pd.isna(row.get("r")) else "")
            if base.empty:
                lines.append(f"{name} {row['quant']}: {row['mean']:.4f} ± {row['std']:.4f}; no float-base row to set it against")
                continue
            ref = base.iloc[0]
            diff, se = _diff(row, ref)
            cost = ("costs accuracy beyond two SE" if diff < 0 else "gains beyond two SE") if _beyond(diff, se) \
                else "no difference beyond two SE"
            lines.append(f"{name}: {row['quant']} {row['mean']:.4f} ± {row['std']:.4f} vs float {ref['mean']:.4f} ± "
                         f"{ref['std']:.4f}, {row['quant']} − float = {_fmt(diff, se)}: {cost}")
    return lines


def verdicts(summary: pd.DataFrame) -> list[str]:
    """Every task's lines, in the summary's order (the float-base rows, where a run also holds quantised ones)."""
    lines = []
    summary = _float_base(summary)
    for (task, _), rows in summary.groupby(["task", "model"], sort=False):
        if "task_args" in rows.columns and rows["task_args"].astype(str).nunique() > 1:
            names = differing_args(rows["task_args"])
            for args, group in rows.groupby(rows["task_args"].astype(str), sort=False):
                lines += task_verdict(group.reset_index(drop=True), names.get(args, args))
        else:
            lines += task_verdict(rows.reset_index(drop=True))
    return lines
