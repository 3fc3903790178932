"""The accuracy summary: the learning rate is chosen on validation (never on test), test is reported over seeds at
that rate, rates with a failed cell do not compete, and the command line prints it and writes a CSV."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench import cli
from bench.views.accuracy import OUTPUT_COLUMNS, summarize
from bench.records.table import COLUMNS, table, write_table


def _rows(method: str, r, per_lr: dict, task: str = "trec6", status: dict | None = None) -> list[dict]:
    """Rows of one configuration: per_lr = {lr: [(val, test), ...one per seed]}."""
    rows = []
    for lr, scores in per_lr.items():
        for seed, (val, test) in enumerate(scores):
            rows.append({
                "task": task, "task_args": "{}", "model": "minilm-l6", "method": method, "impl": "eager", "r": r,
                "alpha": None, "basis": None, "precision": "fp32", "batch_size": 32, "seq_len": 32,
                "warmup_steps": 1, "steps": 100, "compile": False, "compile_scope": "model", "head_lr": None, "lr": lr, "seed": seed,
                "status": (status or {}).get((lr, seed), "ok"), "trainable_params": 1000 if r else 22_000_000,
                "val_accuracy": val, "test_accuracy": test, "test_macro_f1": test - 0.1, "samples_per_s": 100.0,
                "peak_allocated_bytes": None, "wall_s": 10.0,
            })  # fmt: skip
    return rows


def test_the_rate_is_chosen_on_validation_and_test_is_reported_at_it():
    # lr 1e-3 is best on validation; lr 3e-3 would be best on test: the summary must not pick it
    frame = pd.DataFrame(_rows("lora", 8, {1e-3: [(0.90, 0.80), (0.92, 0.82), (0.91, 0.84)],
                                          3e-3: [(0.85, 0.95), (0.86, 0.96), (0.84, 0.97)]}))
    (row,) = summarize(frame).to_dict("records")
    assert row["lr"] == 1e-3 and row["lrs"] == 2 and row["seeds"] == 3
    assert row["select_metric"] == "val_accuracy" and row["metric"] == "test_accuracy"
    assert row["mean"] == pytest.approx(0.82) and row["std"] == pytest.approx(0.02)
    assert row["val_mean"] == pytest.approx(0.91)
    assert row["test_macro_f1_mean"] == pytest.approx(0.72) and row["trainable_params"] == 1000


@pytest.mark.parametrize(
    "best, edge", [(1e-4, "lowest"), (1e-3, ""), (1e-2, "highest")]
)
def test_a_rate_chosen_at_an_end_of_the_sweep_is_flagged(best, edge):
    per_lr = {lr: [(0.9 if lr == best else 0.5, 0.8)] * 3 for lr in (1e-4, 1e-3, 1e-2)}
    (row,) = summarize(pd.DataFrame(_rows("lora", 8, per_lr))).to_dict("records")
    assert row["lr"] == best and row["lr_edge"] == edge
    (single,) = summarize(pd.DataFrame(_rows("lora", 8, {1e-3: [(0.9, 0.8)] * 3}))).to_dict("records")
    assert single["lr_edge"] == ""  # one rate: no sweep, no edge


def test_each_method_and_parameter_set_is_its_own_row_with_its_count():
    frame = pd.DataFrame(_rows("lora", 8, {1e-3: [(0.9, 0.8)] * 3}) + _rows("lora", 4, {1e-3: [(0.8, 0.7)] * 3})
                         + _rows("full", None, {1e-4: [(0.95, 0.9)] * 3}))
    summary = summarize(frame)
    assert len(summary) == 3 and list(summary.columns[: len(OUTPUT_COLUMNS)]) == list(OUTPUT_COLUMNS)
    assert summary.set_index("r", drop=False)["trainable_params"].tolist() == [1000, 1000, 22_000_000]


def test_a_rate_with_a_failed_seed_does_not_compete_and_failures_are_counted():
    frame = pd.DataFrame(_rows("lora", 8, {1e-3: [(0.90, 0.80)] * 3, 1e-2: [(0.99, 0.99)] * 3},
                               status={(1e-2, 1): "diverged"}))
    (row,) = summarize(frame).to_dict("records")
    assert row["lr"] == 1e-3 and row["failed"] == 1
    everything_failed = pd.DataFrame(_rows("lora", 8, {1e-3: [(0.9, 0.8)]}, status={(1e-3, 0): "error"}))
    (row,) = summarize(everything_failed).to_dict("records")
    assert math.isnan(row["lr"]) and row["seeds"] == 0


def test_the_probe_is_chosen_on_output_recovered_and_throughput_rows_are_left_out():
    rows = _rows("lora", 8, {1e-3: [(0.1, 0.2)] * 3, 3e-3: [(0.3, 0.1)] * 3}, task="full-rank-probe")
    for row in rows:
        row["val_output_recovered"], row["test_output_recovered"] = row.pop("val_accuracy"), row.pop("test_accuracy")
        row["delta_recovered"] = row["test_output_recovered"]
    throughput = {**rows[0], "task": "throughput", "val_output_recovered": None, "test_output_recovered": None}
    summary = summarize(pd.DataFrame(rows + [throughput]))
    (row,) = summary.to_dict("records")
    assert row["task"] == "full-rank-probe" and row["lr"] == 3e-3 and row["mean"] == pytest.approx(0.1)
    assert row["delta_recovered_mean"] == pytest.approx(0.1)


def test_the_results_table_carries_lr_and_task_args_as_columns():
    names = [c.name for c in COLUMNS]
    assert "lr" in names and "task_args" in names
    record = Record("h", "trec6 cell", {"lr": 1e-3, "task": "trec6", "task_args": {"model_dir": None, "eval_batch_size": 8}},
                    status="ok", task_metrics={"val_accuracy": 0.5})
    frame = table([record])
    assert frame.loc[0, "lr"] == 1e-3 and frame.loc[0, "val_accuracy"] == 0.5
    assert frame.loc[0, "task_args"] == '{"eval_batch_size": 8, "model_dir": null}'


def test_the_accuracy_command_prints_the_summary_and_writes_a_csv(tmp_path, capsys):
    folder = RunFolder(tmp_path / "run")
    for i, row in enumerate(_rows("lora", 8, {1e-3: [(0.9, 0.8), (0.9, 0.85)]})):
        cell = {k: row[k] for k in ("task", "model", "precision", "batch_size", "seq_len", "warmup_steps", "steps",
                                    "compile", "lr", "seed")}
        cell.update(method={"name": "lora", "impl": "eager", "r": 8, "alpha": 16}, task_args={})
        write_json(folder.result_path(f"cell{i}"), {
            "cell_hash": f"cell{i}", "label": f"cell {i}", "status": "ok", "cell": cell,
            "train": {"trainable_params": 1000, "samples_per_s": 10.0}, "memory": {}, "device": {}, "env": {},
            "run": {"started_at": f"2026-01-01T00:00:0{i}"},
            "task_metrics": {"val_accuracy": row["val_accuracy"], "test_accuracy": row["test_accuracy"]},
        })  # fmt: skip
    write_table(folder)
    assert cli.main(["accuracy", str(folder.root)]) == 0
    out = capsys.readouterr().out
    assert "trec6" in out and "test_accuracy 0.8250 ± 0.0354" in out
    written = pd.read_csv(folder.root / "accuracy_summary.csv")
    assert written.loc[0, "lr"] == 1e-3 and written.loc[0, "seeds"] == 2


def test_the_accuracy_command_on_a_folder_without_results_is_one_sentence(tmp_path, capsys):
    assert cli.main(["accuracy", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_stability_is_the_largest_rate_below_the_first_divergence():
    rows = []
    for lr, status in ((1e-3, "ok"), (3e-3, "ok"), (1e-2, "diverged"), (3e-2, "ok")):
        for seed in (0, 1):
            rows.append({"task": "trec6", "model": "minilm-l6", "method": "lora", "r": 8, "lr": lr, "seed": seed,
                         "status": status, "val_accuracy": 0.5 if status == "ok" else None,
                         "test_accuracy": 0.5 if status == "ok" else None, "trainable_params": 10})
    row = summarize(pd.DataFrame(rows)).iloc[0]
    assert row["max_stable_lr"] == 3e-3 and row["min_diverged_lr"] == 1e-2
