"""The report's charts, as plotly figures serialised to JSON that is safe inside a <script> element.

Every string that comes from a result (names, labels) is HTML-escaped before plotly sees it: plotly renders a
subset of HTML in its text, so an unescaped '<b>' in a model name would turn into markup.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from bench.records.record import Record
from bench.views.report.data import model_order, pareto_front
from bench.views.report.tables import fmt_bytes, fmt_fraction, fmt_rate

HEIGHT = 420


@dataclass(frozen=True)
class Chart:
    id: str  # the element ids of the chart's div (`id`) and of its JSON (`id`-data)
    title: str
    json: str  # the figure; '<', '>' and '&' as \\u escapes, so no string in it can close the <script>


def _e(text) -> str:
    return html.escape(str(text), quote=False)


def to_chart(chart_id: str, title: str, fig: go.Figure) -> Chart:
    text = pio.to_json(fig, validate=True, pretty=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Chart(chart_id, title, text)


def _layout(fig: go.Figure, title: str, x: str, y: str, log_x: bool = True, height: int = HEIGHT) -> go.Figure:
    fig.update_layout(
        title={"text": _e(title), "x": 0.01},
        height=height,
        margin={"l": 70, "r": 20, "t": 60, "b": 60},
        template="plotly_white",
        legend={"font": {"size": 11}},
        hoverlabel={"align": "left"},
    )
    fig.update_xaxes(title_text=x, type="log" if log_x else "linear")
    fig.update_yaxes(title_text=y)
    return fig


def _series(row: pd.Series) -> str:
    return " · ".join(p for p in (row["config"], row["precision"], row["variant"]) if p)


def _hover(row: pd.Series, value: str) -> str:
    return "<br>".join(
        [_e(row["label"]), f"{_e(row['model'])}: {row['total_params']:,} parameters", value]
        + ([_e(row["variant"])] if row["variant"] else [])
    )


def bytes_unit(values: pd.Series) -> tuple[str, float]:
    """GiB when the largest value reaches one, else MiB: an axis people read without counting digits."""
    return ("GiB", 2.0**30) if values.max() >= 2**30 else ("MiB", 2.0**20)


def versus_size(rows: pd.DataFrame, column: str, title: str, y_title: str, fmt, first: str) -> go.Figure | None:
    """Lines of `column` against total parameters, one per configuration, with a menu over batch sizes.
    The first entry takes one cell per configuration and model: its highest `column` (first="highest") or its
    smallest batch size (first="smallest batch"), so models run at different batch sizes still share a line.
    A `column` in bytes is drawn in GiB or MiB."""
    ok = rows[(rows["status"] == "ok")].dropna(subset=[column, "total_params"]).copy()
    if ok.empty:
        return None
    ok["_series"] = ok.apply(_series, axis=1)
    ok["_raw"] = ok[column].astype(float)
    unit, scale = bytes_unit(ok["_raw"]) if column.endswith("_bytes") else ("", 1.0)
    ok["_y"] = ok["_raw"] / scale
    y_title = f"{y_title} ({unit})" if unit else y_title
    views: list[tuple[str, pd.DataFrame]] = []
    by = "_y" if first == "highest" else "batch_size"
    pick = ok.groupby(["_series", "model"])[by].transform("max" if first == "highest" else "min") == ok[by]
    views.append(
        (f"{first}, any batch size" if first == "highest" else first, ok[pick].drop_duplicates(["_series", "model"]))
    )
    views += [(f"batch size {int(b)}", ok[ok["batch_size"] == b]) for b in sorted(ok["batch_size"].unique())]
    fig, visibility = go.Figure(), []
    for v, (name, view) in enumerate(views):
        for series, points in view.sort_values("total_params").groupby("_series", sort=True):
            fig.add_trace(
                go.Scatter(
                    x=points["total_params"].astype(float).tolist(),
                    y=points["_y"].tolist(),
                    mode="lines+markers",
                    name=_e(series),
                    legendgroup=_e(series),
                    hovertext=[_hover(r, f"{fmt(r['_raw'])} (batch {r['batch_size']})") for _, r in points.iterrows()],
                    hoverinfo="text",
                    visible=v == 0,
                )
            )
            visibility.append(v)
    buttons = [
        {"label": name, "method": "update", "args": [{"visible": [t == v for t in visibility]}]}
        for v, (name, _) in enumerate(views)
    ]
    fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}])
    return _layout(fig, title, "total parameters (log)", y_title)


def accuracy_versus(rows: pd.DataFrame, accuracy: str, x: str, x_title: str, title: str, fmt_x) -> go.Figure | None:
    """Accuracy of every finished cell against `x`, one colour per configuration, with the Pareto front of each
    task and base model."""
    ok = rows[rows["status"] == "ok"].copy()
    ok["_acc"] = pd.to_numeric(ok[accuracy], errors="coerce")
    ok["_raw"] = pd.to_numeric(ok[x], errors="coerce")
    ok = ok.dropna(subset=["_acc", "_raw"])
    if ok.empty:
        return None
    unit, scale = bytes_unit(ok["_raw"]) if x.endswith("_bytes") else ("", 1.0)
    ok["_x"] = ok["_raw"] / scale
    x_title = x_title.replace("UNIT", unit)
    ok["_series"] = ok.apply(_series, axis=1)
    fig = go.Figure()
    for series, points in ok.groupby("_series", sort=True):
        fig.add_trace(
            go.Scatter(
                x=points["_x"].tolist(),
                y=points["_acc"].tolist(),
                mode="markers",
                name=_e(series),
                hovertext=[_hover(r, f"{fmt_fraction(r['_acc'])} at {fmt_x(r['_raw'])}") for _, r in points.iterrows()],
                hoverinfo="text",
                marker={"size": 9},
            )
        )
    groups = ok.groupby(["task", "model"], sort=True)
    for (task, model), points in groups:  # accuracies compare within one task on one base model
        front = pareto_front(points["_x"].tolist(), points["_acc"].tolist())
        fig.add_trace(
            go.Scatter(
                x=[points["_x"].iloc[i] for i in front],
                y=[points["_acc"].iloc[i] for i in front],
                mode="lines",
                line={"shape": "hv", "dash": "dot", "color": "#444"},
                name="Pareto front" + (f" ({_e(task)}, {_e(model)})" if groups.ngroups > 1 else ""),
                hoverinfo="skip",
            )
        )
    fig.update_yaxes(tickformat=".0%")
    return _layout(fig, title, x_title, accuracy.replace("_", " "))


def step_spread(rows: pd.DataFrame, records: list[Record], title: str) -> go.Figure | None:
    """A box per finished cell over its measured step times (quartiles and extremes, computed here, so a page of
    hundreds of cells stays small), the largest model at the top."""
    ok = rows[rows["status"] == "ok"].copy()
    ok["_size"] = ok["model"].map({m: n for n, m in enumerate(model_order(rows))})
    fig = go.Figure()
    for i in ok.sort_values(["_size", "config", "precision", "batch_size", "variant"]).index:
        times = records[i].train.get("step_times_s") or []
        if times:
            low, q1, median, q3, high = (round(1e3 * float(v), 4) for v in np.quantile(times, [0, 0.25, 0.5, 0.75, 1]))
            name = _e(" · ".join(filter(None, (ok.at[i, "label"], ok.at[i, "variant"]))))  # one row per cell
            fig.add_trace(
                go.Box(
                    y=[name], q1=[q1], median=[median], q3=[q3], lowerfence=[low], upperfence=[high],
                    name=name, orientation="h", showlegend=False,
                )
            )
    if not fig.data:
        return None
    height = max(HEIGHT, 110 + 24 * len(fig.data))
    fig.update_yaxes(automargin=True)
    times = [t for trace in fig.data for t in (*trace.lowerfence, *trace.upperfence)]
    wide = max(times) > 10 * min(times) > 0  # models of several sizes: a log axis keeps the small ones readable
    return _layout(fig, title, "measured step time (ms" + (", log)" if wide else ")"), "", log_x=wide, height=height)


SPEED_CHARTS = ("throughput", "memory", "acc-memory", "steps")  # meaningless for cells that shared a GPU


def charts_for(
    gpu_type: str, slug: str, rows: pd.DataFrame, records: list[Record], accuracy: str | None
) -> list[Chart]:
    """The charts of one GPU type's section, those that have data. When every cell of the section shared its GPU
    (--cells-per-gpu), its speed and memory are not a lone cell's: those charts are left out (the page says why)."""
    shared = bool((pd.to_numeric(rows["cells_per_gpu"], errors="coerce").fillna(1) > 1).all())
    builders = {
        "throughput": ("Throughput against model size", lambda t: versus_size(rows, "tokens_per_s", t, "tokens/s", fmt_rate, "highest")),
        "memory": ("Peak memory against model size", lambda t: versus_size(rows, "memory_bytes", t, "peak memory", fmt_bytes, "smallest batch")),
        "acc-params": ("Accuracy against trainable parameters", lambda t: accuracy_versus(rows, accuracy, "trainable_params", "trainable parameters (log)", t, lambda v: f"{v:,.0f} trainable")),
        "acc-memory": ("Accuracy against peak memory", lambda t: accuracy_versus(rows, accuracy, "memory_bytes", "peak memory (UNIT, log)", t, fmt_bytes)),
        "steps": ("Step-time spread", lambda t: step_spread(rows, records, t)),
    }  # fmt: skip
    charts = []
    for name, (title, make) in builders.items():
        if (name.startswith("acc-") and not accuracy) or (shared and name in SPEED_CHARTS):
            continue
        title = f"{title} — {gpu_type}"
        fig = make(title)
        if fig is not None:
            charts.append(to_chart(f"{slug}-{name}", title, fig))
    return charts
