"""The report's data shaping: accuracy chosen on validation (bench/views/accuracy.py's selection, never test), the
Pareto front decided on validation, and the code-version keys of the history timelines."""

from __future__ import annotations

import pandas as pd

from bench.views.report import accuracy_view, history
from bench.views.report.charts import accuracy_versus


def accuracy_cells(rows: list[tuple]) -> pd.DataFrame:
    """(task, method, r, trainable, lr, seed, val, test) -> a results frame as the report loads it."""
    return pd.DataFrame(
        [
            {"task": task, "model": "m", "method": method, "r": r, "precision": "fp32", "batch_size": 8,
             "seq_len": 16, "lr": lr, "seed": seed, "status": "ok", "trainable_params": trainable,
             "val_accuracy": val, "test_accuracy": test, "update_rank": r}
            for task, method, r, trainable, lr, seed, val, test in rows
        ]
    )  # fmt: skip


def test_the_accuracy_shown_is_tests_at_the_rate_validation_chose_even_when_test_prefers_another():
    frame = accuracy_cells(
        [("t", "lora", 4, 100, lr, seed, val, test)
         for lr, val, test in ((1e-3, 0.90, 0.70), (1e-2, 0.80, 0.95)) for seed in (0, 1)]
    )  # fmt: skip
    summary = accuracy_view.selected(frame)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["lr"] == 1e-3 and row["mean"] == 0.70 and row["val_mean"] == 0.90 and row["seeds"] == 2


def test_the_pareto_front_is_decided_on_validation_not_on_test():
    frame = accuracy_cells(
        [
            ("t", "lora", 1, 100, 1e-3, 0, 0.90, 0.50),
            ("t", "lora", 2, 200, 1e-3, 0, 0.80, 0.99),  # best on test, beaten on validation by the smaller one
            ("t", "lora", 4, 300, 1e-3, 0, 0.95, 0.60),
        ]
    )
    summary = accuracy_view.selected(frame).set_index("trainable_params")
    assert summary["pareto_val"].to_dict() == {100: True, 200: False, 300: True}


def test_each_task_has_its_own_front_and_panel():
    frame = accuracy_cells([("a", "lora", 1, 100, 1e-3, 0, 0.9, 0.9), ("b", "lora", 1, 200, 1e-3, 0, 0.5, 0.5)])
    summary = accuracy_view.selected(frame)
    assert summary["pareto_val"].all()  # the task-b point is not beaten by task a's
    name, _, figure = accuracy_view.charts(summary)[0]
    assert name == "acc-chosen-params" and [a.text for a in figure.layout.annotations] == ["a · m", "b · m"]


def test_charts_colour_by_method_with_one_legend_entry_each():
    frame = accuracy_cells(
        [("t", method, r, 100 * r, 1e-3, 0, 0.5 + r / 100, 0.5) for method in ("lora", "randlora") for r in (1, 2, 4)]
    )
    figure = accuracy_view.versus(accuracy_view.selected(frame), "update_rank", "rank", "title")
    legend = [t.name for t in figure.data if t.showlegend is not False]
    assert legend == ["lora", "randlora.eager"]


def test_the_every_cell_chart_has_a_trace_per_configuration_not_per_seed_or_rate():
    frame = accuracy_cells([("t", "lora", 4, 100, lr, seed, 0.8, 0.8) for lr in (1e-3, 1e-2) for seed in range(5)])
    frame = frame.assign(config="lora r=4", label="lora r=4", variant=[f"seed={s}" for s in frame["seed"]],
                         total_params=1000)  # fmt: skip
    figure = accuracy_versus(frame, "test_accuracy", "trainable_params", "x", "title", str)
    assert len(figure.data) == 1 and len(figure.data[0].x) == 10


def throughput_cells(rows: list[tuple]) -> pd.DataFrame:
    """(config, git_commit, git_dirty, source_sha256, started_at, tokens/s) -> a results frame."""
    return pd.DataFrame(
        [
            {"gpu_type": "NVIDIA H200", "method": config.split()[0], "config": config, "precision": "bf16",
             "model": "llama-1.1b", "batch_size": 8, "seq_len": 1024, "status": "ok", "git_commit": commit,
             "git_dirty": dirty, "source_sha256": digest, "started_at": started, "tokens_per_s": speed,
             "memory_bytes": 2**30, "run": f"run-{started}"}
            for config, commit, dirty, digest, started, speed in rows
        ]
    )  # fmt: skip


def test_a_version_is_the_commit_else_the_source_digest_else_unknown():
    frame = throughput_cells(
        [
            ("lora", "0123456789abcdef", False, "ffff", "1", 1.0),
            ("lora", "0123456789abcdef", True, "ffff", "2", 1.0),
            ("lora", None, None, "aaaabbbbccccdddd", "3", 1.0),
            ("lora", "", None, None, "4", 1.0),
        ]
    )
    assert history.code_version(frame).tolist() == ["0123456789ab", "0123456789ab+dirty", "src:aaaabbbbcccc", ""]


def test_the_timeline_orders_versions_by_time_and_keeps_one_label_at_two_versions_apart():
    frame = throughput_cells(
        [
            ("randlora.compiled", None, None, "new-digest", "2026-11-29", 66958.0),
            ("randlora.compiled", None, None, "old-digest", "2026-11-28", 31986.0),
            ("randlora.compiled", None, None, "old-digest", "2026-11-28T01", 32014.0),
            ("lora", None, None, "new-digest", "2026-11-29", 50000.0),
        ]
    )
    points = history.timeline(frame)
    compiled = points[points["config"] == "randlora.compiled"].set_index("version")
    assert compiled["order"].to_dict() == {"src:old-digest": 0, "src:new-digest": 1}
    assert compiled["tokens_per_s"].to_dict() == {"src:old-digest": 32000.0, "src:new-digest": 66958.0}  # median
    assert compiled.loc["src:old-digest", "cells"] == 2
    figures = history.charts("NVIDIA H200", frame)
    assert [name for name, _, _ in figures] == ["history-throughput", "history-memory"]
    assert list(figures[0][2].layout.xaxis.categoryarray) == ["src:old-digest", "src:new-digest"]
    lines = [t.name for t in figures[0][2].data]
    assert lines == ["randlora.compiled · bf16 · llama-1.1b · 8×1024"]  # lora ran at one version: no line


def test_one_version_draws_no_timeline():
    frame = throughput_cells([("lora", "abc", False, None, "1", 1.0), ("lora", "abc", False, None, "2", 2.0)])
    assert history.timeline(frame).empty and history.charts("NVIDIA H200", frame) == []


def test_the_inlined_bundle_is_plotly_basic_and_cannot_close_its_script_element():
    import base64
    import gzip
    import re

    from bench.views.report import bundle

    packed = bundle.gzipped_base64()
    assert re.fullmatch(r"[A-Za-z0-9+/=]+", packed) and len(packed) < 600_000
    source = gzip.decompress(base64.b64decode(packed)).decode("utf-8")
    assert source.startswith("/**\n* plotly.js (basic - minified)") and "window.Plotly = Plotly" in source
    assert source == bundle.plain()


def test_a_hostile_label_reaches_the_timeline_as_text():
    hostile = '<img src=x onerror="window.__xss=4">'
    frame = throughput_cells([(f"lora {hostile}", None, None, d, d, 1.0) for d in ("digest-1", "digest-2")])
    figure = history.charts("NVIDIA H200", frame)[0][2]
    assert all(hostile not in t.name and hostile not in "".join(t.hovertext) for t in figure.data)
    assert "&lt;img" in figure.data[0].name


def test_a_probe_panel_draws_the_p_over_n_line_and_each_target_rank_its_own_panel():
    frame = accuracy_cells(
        [("full-rank-probe", method, r, 100 * r, 1e-3, 0, 0.1 * r, 0.1 * r) for method in ("lora", "randlora")
         for r in (1, 2)]
    )
    frame = pd.concat([frame.assign(task_args='{"delta_rank": 4}'), frame.assign(task_args='{"delta_rank": 64}')])
    frame["val_output_recovered"], frame["test_output_recovered"] = frame["val_accuracy"], frame["test_accuracy"]
    frame["p_over_n"] = frame["trainable_params"] / 1000
    summary = accuracy_view.selected(frame)
    _, _, figure = accuracy_view.charts(summary)[0]
    assert [a.text for a in figure.layout.annotations] == ["full-rank-probe · m · delta_rank=4",
                                                           "full-rank-probe · m · delta_rank=64"]
    lines = [t for t in figure.data if t.name and t.name.startswith("p/N")]
    assert len(lines) == 2 and list(lines[0].y) == [0.1, 0.2]  # p/N = trainable / 1000 at 100 and 200
