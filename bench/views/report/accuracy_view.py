"""The report's accuracy section: the learning rate chosen on validation, as bench/views/accuracy.py chooses it
(the one place that selection lives), shown as mean ± std per method and task, and charted against trainable
parameters and against update rank, one panel per task and model, coloured by method, with the Pareto front
decided on validation. Test never takes part in a choice: the charts draw the test mean at the chosen rate.

    selected(frame)                  the summary with `family` (the colour), `label` and `pareto_val` columns
    pareto_on_validation(summary)    the rows no other configuration of the same task and model beats on
                                     validation with as few trainable parameters
    charts(summary)                  the figures, those that have data
"""

from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from bench.spec.cells import MethodSpec
from bench.views.report.data import accuracy_summary, pareto_front
from bench.views.verdict import differing_args

# One colour per method family, stable across the charts of a page (plotly's default qualitative palette).
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff")
PANEL_HEIGHT = 360
SHAPED_FROM = ("task", "model", "method", "precision", "trainable_params", "val_mean", "mean", "std")


def _e(text) -> str:
    return html.escape(str(text), quote=False)


def _present(value) -> bool:
    return value is not None and value is not pd.NA and not (isinstance(value, float) and math.isnan(value))


def _method(row: dict, keys: tuple[str, ...]) -> str:
    """The method as bench/spec/cells.py's MethodSpec names it, with the parameters `keys` the row has."""
    params = {k: int(row[k]) if k in ("r", "n_bases") else row[k] for k in keys if _present(row.get(k))}
    params.setdefault("impl", "eager")  # a table from before the field: the implementation there was
    return MethodSpec(str(row["method"]), tuple(sorted(params.items()))).label()


def family(row: dict) -> str:
    """What a chart colours by: the method, with its implementation where it has several and a basis other than
    the default ("randlora.sparse basis=sparse"; "lora")."""
    return _method(row, ("impl", "basis"))


def label(row: dict) -> str:
    """The configuration: the family, its rank and number of bases, the precision, a quantised base."""
    quant = row.get("quant")
    base = f" quant={quant}" if isinstance(quant, str) and quant != "none" else ""
    return f"{_method(row, ('impl', 'basis', 'r', 'n_bases'))} {row['precision']}{base}"


def pareto_on_validation(summary: pd.DataFrame) -> pd.Series:
    """True for each row on the Pareto front of its task and model, with trainable parameters (fewer is better)
    against the validation mean at the chosen rate (higher is better). Rows without a chosen rate are never on it."""
    on_front = pd.Series(False, index=summary.index)
    scored = summary.dropna(subset=["val_mean", "trainable_params"])
    for _, rows in scored.groupby(["task", "model"], sort=False):
        xs = rows["trainable_params"].astype(float).tolist()
        front = pareto_front(xs, rows["val_mean"].astype(float).tolist())
        on_front[rows.index[front]] = True
    return on_front


def selected(frame: pd.DataFrame) -> pd.DataFrame | None:
    """bench/views/accuracy.py's summary of `frame` (one row per configuration, at the rate chosen on validation)
    with `family`, `label` and `pareto_val`; None when the frame holds no accuracy cells."""
    summary = accuracy_summary(frame)
    if summary is None or not set(SHAPED_FROM) <= set(summary.columns):
        return summary  # a summary of another shape is shown as it comes
    records = summary.to_dict("records")
    summary = summary.assign(
        family=[family(r) for r in records], label=[label(r) for r in records], pareto_val=False
    )
    summary["pareto_val"] = pareto_on_validation(summary)
    return summary


def _hover(row: pd.Series) -> str:
    std = f" ± {100 * row['std']:.1f}" if _present(row["std"]) else ""
    return "<br>".join(
        [
            _e(row["label"]),
            f"{_e(row['metric'])}: {100 * row['mean']:.1f} %{std} (test, {row['seeds']} seeds)",
            f"validation {100 * row['val_mean']:.1f} %, lr {row['lr']:g} chosen on it",
            f"{int(row['trainable_params']):,} trainable" + (
                f", update rank {int(row['update_rank'])}" if _present(row["update_rank"]) else ""
            ),
        ]
    )


def versus(summary: pd.DataFrame, x: str, x_title: str, title: str) -> go.Figure | None:
    """Test mean ± std at the chosen rate against `x`, one panel per task and model, one colour per family; the
    Pareto front on validation (trainable parameters against validation) drawn through its members."""
    rows = summary.dropna(subset=["mean"]).copy()
    rows["_x"] = pd.to_numeric(rows[x], errors="coerce")
    rows = rows.dropna(subset=["_x"])
    if rows.empty:
        return None
    rows["_args"] = rows["task_args"].map(lambda v: "" if pd.isna(v) else str(v)) if "task_args" in rows else ""
    panels = list(rows.groupby(["task", "model", "_args"], sort=True))
    cols = min(2, len(panels))
    nrows = math.ceil(len(panels) / cols)
    shown_args = {}
    for task, group in rows.groupby("task"):
        shown_args.update(differing_args(group["_args"]) if group["_args"].nunique() > 1 else {})
    names = [f"{_e(task)} · {_e(model)}" + (f" · {_e(shown_args[args])}" if shown_args.get(args) else "")
             for (task, model, args), _ in panels]
    fig = make_subplots(rows=nrows, cols=cols, subplot_titles=names, horizontal_spacing=0.08, vertical_spacing=0.12)
    colours = {f: PALETTE[i % len(PALETTE)] for i, f in enumerate(sorted(summary["family"].unique()))}
    shown: set[str] = set()
    for n, (_, points) in enumerate(panels):
        where = {"row": n // cols + 1, "col": n % cols + 1}
        for fam, group in points.sort_values("_x").groupby("family", sort=True):
            fig.add_trace(
                go.Scatter(
                    x=group["_x"].tolist(),
                    y=group["mean"].tolist(),
                    error_y={"type": "data", "array": group["std"].fillna(0).tolist(), "thickness": 1},
                    mode="markers",
                    marker={"size": 9, "color": colours[fam]},
                    name=_e(fam),
                    legendgroup=_e(fam),
                    showlegend=fam not in shown,
                    hovertext=[_hover(r) for _, r in group.iterrows()],
                    hoverinfo="text",
                ),
                **where,
            )
            shown.add(fam)
        if x == "trainable_params" and "p_over_n_mean" in points and points["p_over_n_mean"].notna().any():
            line = points.dropna(subset=["p_over_n_mean"]).groupby("_x")["p_over_n_mean"].mean().sort_index()
            fig.add_trace(
                go.Scatter(
                    x=line.index.tolist(),
                    y=line.clip(upper=1.0).tolist(),
                    mode="lines",
                    line={"dash": "dash", "color": "#999"},
                    name="p/N (what p numbers recover of a change with no structure)",
                    legendgroup="p/N",
                    showlegend="p/N" not in shown,
                    hoverinfo="skip",
                ),
                **where,
            )
            shown.add("p/N")
        front = points[points["pareto_val"]].sort_values("_x")
        if x == "trainable_params" and len(front):
            fig.add_trace(
                go.Scatter(
                    x=front["_x"].tolist(),
                    y=front["mean"].tolist(),
                    mode="lines",
                    line={"shape": "hv", "dash": "dot", "color": "#444"},
                    name="Pareto front (on validation)",
                    legendgroup="pareto",
                    showlegend="pareto" not in shown,
                    hoverinfo="skip",
                ),
                **where,
            )
            shown.add("pareto")
        fig.update_xaxes(type="log", title_text=x_title, **where)
        fig.update_yaxes(tickformat=".0%", title_text="test, chosen rate" if where["col"] == 1 else None, **where)
    fig.update_layout(
        title={"text": _e(title), "x": 0.01},
        height=120 + PANEL_HEIGHT * nrows,
        margin={"l": 70, "r": 20, "t": 90, "b": 60},
        template="plotly_white",
        legend={"font": {"size": 11}, "groupclick": "togglegroup"},
        hoverlabel={"align": "left"},
    )
    return fig


def charts(summary: pd.DataFrame) -> list[tuple[str, str, go.Figure]]:
    """(id suffix, title, figure) for accuracy against trainable parameters and against update rank."""
    out = []
    if "pareto_val" not in summary:
        return out
    for name, x, x_title, title in (
        ("acc-chosen-params", "trainable_params", "trainable parameters (log)",
         "Accuracy at the rate chosen on validation, against trainable parameters"),
        ("acc-chosen-rank", "update_rank", "update rank (log)",
         "Accuracy at the rate chosen on validation, against update rank"),
    ):  # fmt: skip
        fig = versus(summary, x, x_title, title) if x in summary else None
        if fig is not None:
            out.append((name, title, fig))
    return out
