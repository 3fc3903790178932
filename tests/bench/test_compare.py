"""`bench compare`: a run against itself passes, a run 30 % slower fails, noise widens the bound, bad input exits 2."""

from __future__ import annotations

import io
from pathlib import Path

from bench import cli
from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import Record
from bench.views import compare

from .report_runs import GPUS, METHODS, cell_record

SLOWDOWN = 0.7  # the copy runs at 70 % of the base's throughput


def write_run(root: Path, records: list[Record]) -> Path:
    folder = RunFolder(root)
    for record in records:
        write_json(folder.result_path(record.cell_hash), record)
    return root


def small_run(root: Path) -> Path:
    machine, gpu = GPUS["h200"]
    records = [
        cell_record(machine, gpu, tokens_per_s=speed, peak=memory * 2**30, method=METHODS[method], batch_size=batch)
        for method, speed, memory in (("full", 1000, 4), ("lora", 800, 2), ("randlora", 1200, 1))
        for batch in (1, 2)
    ]
    return write_run(root, records)


def slowed_copy(run: Path, root: Path, factor: float = SLOWDOWN) -> Path:
    """A copy of `run` whose throughputs are scaled by `factor` and step times by 1 / factor."""
    copies = []
    for path in sorted((run / "cells").glob("*.json")):
        record = Record.from_dict(read_json(path))
        train = record.train
        for key in ("tokens_per_s", "samples_per_s"):
            if train.get(key) is not None:
                train[key] *= factor
        for key in ("step_time_median_s", "step_time_p10_s", "step_time_p90_s"):
            if train.get(key) is not None:
                train[key] /= factor
        train["step_times_s"] = [t / factor for t in train.get("step_times_s", [])]
        copies.append(record)
    return write_run(root, copies)


def run_cli(*argv) -> tuple[int, str]:
    import contextlib

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["compare", *map(str, argv)])
    return code, out.getvalue()


def test_compare_exits_0_on_a_run_against_itself(tmp_path):
    run = small_run(tmp_path / "base")
    code, out = run_cli(run, run)
    assert code == 0, out
    assert out.splitlines()[-1] == "ok: 6 same"


def test_compare_exits_1_against_a_copy_whose_throughput_is_30_percent_lower(tmp_path):
    run = small_run(tmp_path / "base")
    slow = slowed_copy(run, tmp_path / "slow")
    code, out = run_cli(run, slow)
    assert code == 1, out
    assert "REGRESSION: 6 regression" in out
    assert "-30.0%" in out


def test_a_change_within_the_cells_step_time_spread_is_not_a_regression(tmp_path):
    run = small_run(tmp_path / "base")
    (record,) = [r for r in RunFolder(run).records().values() if r.cell["batch_size"] == 1 and "full" in r.label]
    noisy = Record.from_dict(record.to_dict())
    median = noisy.train["step_time_median_s"]
    noisy.train["step_times_s"] = [median * f for f in (0.7, 0.9, 1.0, 1.1, 1.3)]  # spread ≈ 40 %
    noisy.train["tokens_per_s"] *= 0.85
    (row,) = compare.compare_records({record.cell_hash: record}, {noisy.cell_hash: noisy}, 0.05)
    assert row.verdict == "same"
    assert row.changes["tokens_per_s"].bound > 0.3


def test_cells_on_one_side_only_are_listed_as_new_or_missing_and_pass(tmp_path):
    run = small_run(tmp_path / "base")
    partial = tmp_path / "partial"
    records = sorted(RunFolder(run).records().values(), key=lambda r: r.label)
    write_run(partial, records[:4])
    machine, gpu = GPUS["a100"]
    write_run(partial, [cell_record(machine, gpu, method=METHODS["lora"], batch_size=7)])
    code, out = run_cli(run, partial)
    assert code == 0, out
    assert out.splitlines()[-1] == "ok: 4 same, 1 new, 2 missing"


def test_an_ok_cell_that_runs_out_of_memory_in_the_new_run_is_a_regression(tmp_path):
    machine, gpu = GPUS["h200"]
    ok = cell_record(machine, gpu, method=METHODS["lora"])
    oom = cell_record(machine, gpu, "oom", method=METHODS["lora"])
    (row,) = compare.compare_records({ok.cell_hash: ok}, {oom.cell_hash: oom}, 0.05)
    assert (row.verdict, row.note) == ("regression", "ok → oom")


def test_compare_exits_2_on_a_folder_that_is_not_a_run_or_runs_that_share_no_cell(tmp_path, capsys):
    run = small_run(tmp_path / "base")
    assert cli.main(["compare", str(run), str(tmp_path / "nothing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    machine, gpu = GPUS["a100"]
    other = write_run(tmp_path / "other", [cell_record(machine, gpu, method=METHODS["lora"], batch_size=9)])
    assert cli.main(["compare", str(run), str(other)]) == 2
    assert "shares no cell" in capsys.readouterr().err


def test_check_throughput_gates_tokens_per_s_against_a_run_beside_the_memory_gate(tmp_path, capsys):
    run = small_run(tmp_path / "base")
    slow = slowed_copy(run, tmp_path / "slow")
    baselines = tmp_path / "baselines"
    baselines.mkdir()  # no H200 baseline: the memory gate passes with --allow-missing, throughput decides
    gate = ["check", "--allow-missing", "--baselines", str(baselines), "--throughput", "--against", str(run)]
    assert cli.main([*gate[:-3], str(run), *gate[-3:]]) == 0
    assert cli.main([*gate[:-3], str(slow), *gate[-3:]]) == 1
    assert "REGRESSION: 6 regression" in capsys.readouterr().out
    assert cli.main(["check", str(slow), "--throughput"]) == 2
    assert "--throughput and --against RUN_DIR go together" in capsys.readouterr().err
