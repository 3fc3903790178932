"""Result files and the table: atomic writes, the flat schema, parquet and CSV."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.records import table as results
from bench.records.table import COLUMNS

from .conftest import one_cell


def record(status="ok", **sections) -> dict:
    cell = one_cell(method={"name": "randlora", "r": 8})
    rec = Record.new(
        cell,
        env={"torch_version": "2.x", "git_commit": "abc", "git_dirty": False, "gpu": None},
        run={"run_name": "t", "gpu_busy": False, "started_at": "2026-01-01T00:00:00+00:00"},
    )
    rec.status = status
    rec.complete(sections)
    return rec


def test_write_json_leaves_no_temporary_file_and_a_readable_result(tmp_path):
    path = tmp_path / "cells" / "abc.json"
    write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(path.parent) == ["abc.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "abc.json"
    write_json(path, {"a": 1})
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        write_json(path, circular)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["abc.json"]


def test_the_table_has_the_documented_columns_and_dtypes():
    frame = results.table([record(train={"tokens_per_s": 10.0, "trainable_params": 7}), record("oom", reason="x")])
    assert list(frame.columns) == [c.name for c in COLUMNS]
    assert {c.name: str(frame[c.name].dtype) for c in COLUMNS} == {c.name: c.dtype for c in COLUMNS}
    assert frame.loc[0, "tokens_per_s"] == 10.0 and pd.isna(frame.loc[1, "tokens_per_s"])
    assert (frame.loc[0, "method"], frame.loc[0, "impl"], frame.loc[0, "r"]) == ("randlora", "eager", 8)


def test_the_key_fields_of_the_issue_are_columns():
    names = {c.name for c in COLUMNS}
    wanted = """cell_hash status reason method impl precision model batch_size seq_len steps seed task trainable_params
        tokens_per_s samples_per_s step_time_median_s step_time_p10_s step_time_p90_s first_step_s mfu
        peak_allocated_bytes peak_reserved_bytes cell_peak_allocated_bytes nvml_peak_bytes host_rss_peak_bytes
        param_bytes grad_bytes optimizer_bytes activation_bytes gpu_name gpu_count torch_version transformers_version
        peft_version git_commit git_dirty accuracy""".split()
    assert set(wanted) <= names


def test_task_metrics_fill_accuracy_and_add_their_own_columns():
    frame = results.table([record(task_metrics={"accuracy": 0.75, "f1": 0.5}), record()])
    assert frame.loc[0, "accuracy"] == 0.75 and frame.loc[0, "f1"] == 0.5
    assert pd.isna(frame.loc[1, "f1"]) and list(frame.columns)[-1] == "f1"


def test_the_table_round_trips_through_parquet_and_csv(tmp_path):
    folder = RunFolder(tmp_path)
    for i, status in enumerate(["ok", "timeout"]):
        write_json(folder.result_path(f"h{i}"), record(status, train={"tokens_per_s": 1.5}))
    parquet, csv = results.write_table(folder)
    frame = pd.read_parquet(parquet)
    assert sorted(frame["status"]) == ["ok", "timeout"]
    assert str(frame["batch_size"].dtype) == "Int64" and str(frame["git_dirty"].dtype) == "boolean"
    assert list(pd.read_csv(csv).columns) == list(frame.columns)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_every_column_is_documented_in_the_harness_readme():
    from pathlib import Path

    import bench

    text = (Path(bench.__file__).parent / "README.md").read_text(encoding="utf-8")
    missing = [c.name for c in COLUMNS if f"| `{c.name}` | {c.dtype} |" not in text]
    assert not missing
