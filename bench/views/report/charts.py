"""The report's charts, as plotly figures serialised to JSON that is safe inside a <script> element.

Every string that comes from a result (names, labels) is HTML-escaped before plotly sees it: plotly renders a
subset of HTML in its text, so an unescaped '<b>' in a model name would turn into markup.
"""

from __future__ import annotations

import functools
import html
import json
from dataclasses import dataclass

import pandas as pd
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from bench.records.record import Record
from bench.views.report import history
from bench.views.report.data import model_order, shared_gpu
from bench.views.report.tables import fmt_bytes, fmt_fraction, fmt_rate

HEIGHT = 420


PAGE_TEMPLATE = "plotly_white"  # every chart's look: the page carries it once (template_json), not each chart


@dataclass(frozen=True)
class Chart:
    id: str  # the element ids of the chart's div (`id`) and of its JSON (`id`-data)
    title: str
    json: str  # the figure; '<', '>' and '&' as \\u escapes, so no string in it can close the <script>


def _e(text) -> str:
    return html.escape(str(text), quote=False)


def _script_safe(figure: dict) -> str:
    text = json.dumps(figure, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def _page_template() -> dict:
    return json.loads(pio.to_json(go.Figure(layout={"template": PAGE_TEMPLATE}), pretty=False))["layout"]["template"]


def template_json() -> str:
    """PAGE_TEMPLATE as the page carries it, once: the page gives it to each chart that has none (6.5 kB a chart)."""
    return _script_safe(_page_template())


def to_chart(chart_id: str, title: str, fig: go.Figure) -> Chart:
    figure = json.loads(pio.to_json(fig, validate=True, pretty=False))
    if figure["layout"].get("template") == _page_template():
        del figure["layout"]["template"]
    return Chart(chart_id, title, _script_safe(figure))


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


def _unsaid(label: str, variant) -> str:
    """The parts of a cell's variant that its label does not already say ("lr=0.001 seed=2" -> "seed=2")."""
    said = set(str(label).split(" "))
    return " ".join(part for part in str(variant or "").split(" ") if part and part not in said)


def _hover(row: pd.Series, value: str) -> str:
    extra = _unsaid(row["label"], row["variant"])
    return "<br>".join(
        [_e(row["label"]), f"{_e(row['model'])}: {row['total_params']:,} parameters", value]
        + ([_e(extra)] if extra else [])
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
        for (method, series), points in view.sort_values("total_params").groupby(["method", "_series"], sort=True):
            fig.add_trace(
                go.Scatter(
                    x=points["total_params"].astype(float).tolist(),
                    y=points["_y"].tolist(),
                    mode="lines+markers",
                    name=_e(series),
                    legendgroup=_e(method),
                    legendgrouptitle={"text": _e(method)},
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
    fig.update_layout(
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}],
        legend={"groupclick": "toggleitem"},
    )
    return _layout(fig, title, "total parameters (log)", y_title)


def accuracy_versus(rows: pd.DataFrame, accuracy: str, x: str, x_title: str, title: str, fmt_x) -> go.Figure | None:
    """Accuracy of every finished cell (each rate and seed) against `x`: one trace per configuration and precision,
    grouped in the legend by method, the rate and seed in each point's hover. No front here: which configuration
    wins is decided on validation, in the accuracy section (accuracy_view.py)."""
    ok = rows[rows["status"] == "ok"].copy()
    ok["_acc"] = pd.to_numeric(ok[accuracy], errors="coerce")
    ok["_raw"] = pd.to_numeric(ok[x], errors="coerce")
    ok = ok.dropna(subset=["_acc", "_raw"])
    if ok.empty:
        return None
    unit, scale = bytes_unit(ok["_raw"]) if x.endswith("_bytes") else ("", 1.0)
    ok["_x"] = ok["_raw"] / scale
    x_title = x_title.replace("UNIT", unit)
    ok["_series"] = ok["config"] + " · " + ok["precision"]
    fig = go.Figure()
    for (method, series), points in ok.groupby(["method", "_series"], sort=True):
        fig.add_trace(
            go.Scatter(
                x=points["_x"].tolist(),
                y=points["_acc"].tolist(),
                mode="markers",
                name=_e(series),
                legendgroup=_e(method),
                legendgrouptitle={"text": _e(method)},
                hovertext=[_hover(r, f"{fmt_fraction(r['_acc'])} at {fmt_x(r['_raw'])}") for _, r in points.iterrows()],
                hoverinfo="text",
                marker={"size": 7, "opacity": 0.7},
            )
        )
    fig.update_yaxes(tickformat=".0%")
    fig.update_layout(legend={"groupclick": "toggleitem"})
    return _layout(fig, title, x_title, accuracy.replace("_", " "))


def step_spread(rows: pd.DataFrame, records: list[Record], title: str) -> go.Figure | None:
    """Per finished cell, its measured step times drawn as a box would be (a thin line min–max, a thick one for the
    quartiles, a mark at the median; computed here, so a page of hundreds of cells stays small), the largest model
    at the top. Three scatter traces in all: plotly's basic bundle has no box trace, and one trace per cell would
    weigh more."""
    ok = rows[rows["status"] == "ok"].copy()
    ok["_size"] = ok["model"].map({m: n for n, m in enumerate(model_order(rows))})
    names, stats = [], []
    for i in ok.sort_values(["_size", "config", "precision", "batch_size", "variant"]).index:
        times = records[i].train.get("step_times_s") or []
        if times:
            label = ok.at[i, "label"]
            names.append(_e(" · ".join(filter(None, (label, _unsaid(label, ok.at[i, "variant"]))))))  # a row per cell
            stats.append([round(1e3 * float(v), 4) for v in np.quantile(times, [0, 0.25, 0.5, 0.75, 1])])
    if not stats:
        return None

    rows_at = list(range(len(names) - 1, -1, -1))  # the first cell at the top; the names once, as tick labels

    def segments(lo: int, hi: int) -> tuple[list, list]:
        xs, ys = [], []
        for y, s in zip(rows_at, stats):
            xs += [s[lo], s[hi], None]
            ys += [y, y, None]
        return xs, ys

    fig = go.Figure()
    for (lo, hi), width in (((0, 4), 1.5), ((1, 3), 9)):
        xs, ys = segments(lo, hi)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"width": width, "color": "#636efa"},
                                 hoverinfo="skip", showlegend=False))  # fmt: skip
    hover = [f"{n}<br>median {s[2]} ms, quartiles {s[1]}–{s[3]}, range {s[0]}–{s[4]}" for n, s in zip(names, stats)]
    fig.add_trace(go.Scatter(x=[s[2] for s in stats], y=rows_at, mode="markers", hovertext=hover, hoverinfo="text",
                             marker={"symbol": "line-ns-open", "size": 12, "color": "#1d2430"}, showlegend=False))  # fmt: skip
    height = max(HEIGHT, 110 + 24 * len(names))
    fig.update_yaxes(automargin=True, tickmode="array", tickvals=rows_at, ticktext=names,
                     range=[-0.5, len(names) - 0.5], showgrid=False, zeroline=False)  # fmt: skip
    wide = max(s[4] for s in stats) > 10 * min(s[0] for s in stats) > 0  # several model sizes: log keeps them readable
    return _layout(fig, title, "measured step time (ms" + (", log)" if wide else ")"), "", log_x=wide, height=height)


SPEED_CHARTS = ("throughput", "memory", "acc-memory", "steps")  # meaningless for cells that shared a GPU
RAW_CHARTS = ("acc-params", "acc-memory")  # every rate and seed: behind the page's toggle


def charts_for(
    gpu_type: str, slug: str, rows: pd.DataFrame, records: list[Record], accuracy: str | None
) -> tuple[list[Chart], list[Chart]]:
    """The charts of one GPU type's section that have data, as (shown, raw): raw are those of every cell, each
    learning rate and seed apart (RAW_CHARTS), which the page keeps behind a toggle. When every cell of the section
    shared its GPU (--cells-per-gpu), its speed and memory are not a lone cell's: those charts are left out (the
    page says why)."""
    shared = bool(shared_gpu(rows).all())
    builders = {
        "throughput": ("Throughput against model size", lambda t: versus_size(rows, "tokens_per_s", t, "tokens/s", fmt_rate, "highest")),
        "memory": ("Peak memory against model size", lambda t: versus_size(rows, "memory_bytes", t, "peak memory", fmt_bytes, "smallest batch")),
        "acc-params": ("Accuracy of every cell against trainable parameters", lambda t: accuracy_versus(rows, accuracy, "trainable_params", "trainable parameters (log)", t, lambda v: f"{v:,.0f} trainable")),
        "acc-memory": ("Accuracy of every cell against peak memory", lambda t: accuracy_versus(rows, accuracy, "memory_bytes", "peak memory (UNIT, log)", t, fmt_bytes)),
        "steps": ("Step-time spread", lambda t: step_spread(rows, records, t)),
    }  # fmt: skip
    shown, raw = [], []
    for name, (title, make) in builders.items():
        if (name.startswith("acc-") and not accuracy) or (shared and name in SPEED_CHARTS):
            continue
        title = f"{title} — {gpu_type}"
        fig = make(title)
        if fig is not None:
            (raw if name in RAW_CHARTS else shown).append(to_chart(f"{slug}-{name}", title, fig))
    if not shared:
        shown += [to_chart(f"{slug}-{name}", title, fig) for name, title, fig in history.charts(gpu_type, rows)]
    return shown, raw
