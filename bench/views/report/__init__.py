"""`python -m bench report RESULTS... -o report.html`: one self-contained HTML page comparing configurations.

data.py        run folders -> one frame (several machines and GPU types merged), ratios, the Pareto front
tables.py      the summary, task arguments, pivots (method × precision against model × batch size), failures,
               environments
charts.py      plotly figures: throughput and memory against model size, every cell's accuracy against trainable
               parameters and memory, step-time spread
accuracy_view.py   accuracy at the rate chosen on validation: the table, charts per task, the front on validation
history.py     timelines across code versions (git commit, else source digest) when the runs hold several
scaling.py     tokens/s per GPU against the GPU count (1, 2, 4, 8) for each method at one model (scaling.html.j2)
verdict.py     the page's first section: each RandLoRA variant against named baselines, ratios with their range
bundle.py      plotly.js's basic bundle, gzipped; the page inflates it itself, so it opens offline with no request
sortable.js    sorting and filtering of the tables (inlined, ~4 kB)
template.html.j2   the page (Jinja2, autoescape on)
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path

import jinja2
import pandas as pd

from bench.views.report import accuracy_view
from bench.views.report import bundle
from bench.views.report import charts
from bench.views.report import data
from bench.views.report import scaling
from bench.views.report import tables
from bench.views.report import verdict

TEMPLATE = "template.html.j2"


def _slug(text: str) -> str:
    return "gpu-" + (re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown")


def _sortable_js() -> str:
    from importlib import resources

    return resources.files("bench.views.report").joinpath("sortable.js").read_text(encoding="utf-8")


def _plotly_file(output: Path, shared: Path) -> str:
    """Write plotly.js to `shared` (once, atomically) and return its path relative to the page: pages that share
    one copy (the committed studies) stay small and still open offline, as long as the file travels with them."""
    from bench.core.fileio import write_text

    if not shared.is_file():
        write_text(shared, bundle.plain())
    return os.path.relpath(shared.resolve(), output.resolve().parent)


def render(runs: data.Runs, title: str, plotly_src: str | None = None) -> str:
    """The page for `runs`, as a string; plotly.js inlined (gzipped, see bundle.py), or loaded from `plotly_src` (a
    relative path)."""
    frame = runs.frame
    accuracy = (data.accuracy_columns(frame) or [None])[0]
    gpus = []
    for gpu_type, rows in frame.groupby("gpu_type", sort=True):
        slug = _slug(gpu_type)
        shown, raw = charts.charts_for(gpu_type, slug, rows, runs.records, accuracy)
        gpus.append(
            {
                "name": gpu_type,
                "slug": slug,
                "cells": len(rows),
                "runs": sorted(rows["run"].unique()),
                "machines": sorted(rows["machine"].dropna().unique()),
                "pivots": tables.pivots(rows),
                "shared_note": tables.shared_note(rows),
                "pivots_raw": bool(rows["variant"].fillna("").ne("").any()),  # a row per run, rate or seed
                "charts": shown,
                "raw_charts": raw,
            }
        )
    summary = accuracy_view.selected(frame)
    accuracy_charts = [] if summary is None else [
        charts.to_chart(name, title, fig) for name, title, fig in accuracy_view.charts(summary)
    ]
    verdicts = verdict.groups(frame)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bench.views.report", "."),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
    )
    counts = frame["status"].value_counts()
    sharing = pd.to_numeric(frame["cells_per_gpu"], errors="coerce").fillna(1)  # cells that shared a GPU
    shared = {"cells": int((sharing > 1).sum()), "most": int(sharing.max())} if (sharing > 1).any() else None
    return env.get_template(TEMPLATE).render(
        title=title,
        built_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        runs=[f["name"] for f in runs.folders],
        cells=len(frame),
        counts=[(s, int(n)) for s, n in counts.items()],
        verdict={"sentence": verdict.sentence(verdicts), "groups": verdicts},
        best=tables.summary(runs),
        accuracy_summary=tables.accuracy_view(summary) if summary is not None else None,
        accuracy_charts=accuracy_charts,
        accuracy_columns=data.accuracy_columns(frame),
        tasks=tables.tasks(runs),
        gpus=gpus,
        scaling=scaling.tables(frame),
        failures=tables.failures(runs),
        environments=tables.environments(runs),
        memory_note=tables.MEMORY_NOTE,
        shared=shared,
        plotly_gz=None if plotly_src else bundle.gzipped_base64(),
        plotly_src=plotly_src,
        sortable_js=_sortable_js(),
        chart_template=charts.template_json(),
    )


def build(
    paths: list[Path], output: Path, title: str = "RandLoRA benchmark report", plotly_js: Path | None = None
) -> Path:
    """Write the report of the run folders in `paths` to `output` (atomically); returns `output`. With
    `plotly_js`, the page loads plotly.js from that file (written there if missing) instead of inlining it."""
    from bench.core.fileio import write_text

    runs = data.load(list(paths))
    page = render(runs, title, _plotly_file(output, plotly_js) if plotly_js else None)
    write_text(output, page)
    return output
