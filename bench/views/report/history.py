"""History: the same grid run at several versions of the code, drawn as one timeline per configuration (asv-style):
x = the code version in time order, y = tokens/s or peak memory, one line per configuration.

A version is the git commit ("+dirty" when the tree had changes) or, where git was absent (a device copy without
.git), the source digest (`src:` + the first 12 hex digits of source_sha256); rows with neither are left out. A
point is one version of one configuration (median tokens/s, largest peak memory over its cells), so a label that
named two implementations at two versions (randlora.compiled, say) draws two points, never one mixed value.

    code_version(frame)   per row: its version key, "" when unknown
    timeline(frame)       one row per (configuration, version), with `order` (the version's place in time)
    charts(gpu_type, rows)   the figures of one GPU type: the configurations measured at two versions or more
"""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go

from bench.views.report.tables import fmt_bytes, fmt_rate

CONFIGURATION = ("gpu_type", "method", "config", "precision", "model", "batch_size", "seq_len")
HEIGHT = 460


def _e(text) -> str:
    return html.escape(str(text), quote=False)


def code_version(frame: pd.DataFrame) -> pd.Series:
    """Per row: the git commit (first 12 digits, "+dirty" when git_dirty), else "src:" + the source digest's first
    12, else ""."""
    empty = pd.Series("", index=frame.index, dtype=object)
    commit = frame["git_commit"].fillna("").astype(str).str[:12] if "git_commit" in frame else empty
    dirty = frame["git_dirty"] if "git_dirty" in frame else pd.Series(False, index=frame.index)
    dirty = dirty.fillna(False).astype(bool)
    digest = frame["source_sha256"].fillna("").astype(str).str[:12] if "source_sha256" in frame else empty
    from_git = commit + dirty.map({True: "+dirty", False: ""})
    from_digest = ("src:" + digest).where(digest != "", "")
    return from_git.where(commit != "", from_digest)


def timeline(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (CONFIGURATION) and code version of the cells that finished: `version`, `order`
    (0 = the version whose first cell started earliest), `tokens_per_s` (median), `memory_bytes` (max), `cells`,
    `runs`. Empty when fewer than two versions are known."""
    rows = frame[frame["status"] == "ok"].assign(version=code_version(frame))
    rows = rows[rows["version"] != ""]
    if rows["version"].nunique() < 2:
        return pd.DataFrame(columns=[*CONFIGURATION, "version", "order", "tokens_per_s", "memory_bytes"])
    first = rows.groupby("version")["started_at"].min().sort_values(kind="stable")
    order = {v: i for i, v in enumerate(first.index)}
    keys = [*CONFIGURATION, "version"]
    points = rows.groupby(keys, dropna=False, sort=False).agg(
        tokens_per_s=("tokens_per_s", "median"),
        memory_bytes=("memory_bytes", "max"),
        cells=("status", "size"),
        runs=("run", lambda r: ", ".join(sorted(set(r)))),
    )
    points = points.reset_index()
    points["order"] = points["version"].map(order)
    return points.sort_values([*CONFIGURATION, "order"], kind="stable", ignore_index=True)


def _figure(points: pd.DataFrame, versions: list[str], column: str, fmt, title: str, y_title: str) -> go.Figure:
    fig = go.Figure()
    for key, line in points.groupby(list(CONFIGURATION[1:]), dropna=False, sort=True):
        method, config, precision, model, batch, seq = key
        name = f"{config} · {precision} · {model} · {batch}×{seq}"
        fig.add_trace(
            go.Scatter(
                x=line["version"].tolist(),
                y=line[column].astype(float).tolist(),
                mode="lines+markers",
                name=_e(name),
                legendgroup=_e(method),
                legendgrouptitle={"text": _e(method)},
                hovertext=[
                    f"{_e(name)}<br>{_e(r['version'])}: {fmt(float(r[column]))}<br>{r['cells']} cells, {_e(r['runs'])}"
                    for _, r in line.iterrows()
                ],
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title={"text": _e(title), "x": 0.01},
        height=HEIGHT,
        margin={"l": 70, "r": 20, "t": 60, "b": 90},
        template="plotly_white",
        legend={"font": {"size": 11}, "groupclick": "toggleitem"},
        hoverlabel={"align": "left"},
    )
    fig.update_xaxes(title_text="code version, oldest first", type="category", categoryorder="array",
                     categoryarray=[_e(v) for v in versions])  # fmt: skip
    fig.update_yaxes(title_text=y_title)
    return fig


def charts(gpu_type: str, rows: pd.DataFrame) -> list[tuple[str, str, go.Figure]]:
    """(id suffix, title, figure): tokens/s and peak memory across code versions, for one GPU type's rows."""
    points = timeline(rows)
    points = points[points["gpu_type"] == gpu_type] if len(points) else points
    if points.empty:
        return []
    spans = points.groupby(list(CONFIGURATION), dropna=False)["version"].transform("nunique")
    points = points[spans > 1]  # a configuration measured at one version has no history to draw
    if points.empty:
        return []
    versions = points.sort_values("order")["version"].drop_duplicates().tolist()
    out = []
    for name, column, fmt, title, y_title in (
        ("history-throughput", "tokens_per_s", fmt_rate, "Throughput across code versions", "tokens/s"),
        ("history-memory", "memory_bytes", fmt_bytes, "Peak memory across code versions", "peak memory (bytes)"),
    ):
        have = points.dropna(subset=[column])
        if not have.empty:
            title = f"{title} — {gpu_type}"
            out.append((name, title, _figure(have, versions, column, fmt, title, y_title)))
    return out
