"""Run folders that are damaged or hold only failures: every command reads them with a warning or one sentence
naming the file, never a traceback; a report of failures is still a report."""

from __future__ import annotations

import pytest

from bench import cli
from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder

from .report_runs import GPUS, METHODS, cell_record

DAMAGE = {"a list": "[]", "an empty object": "{}", "half a file": '{"cell": {"model": "tiny-ll', "nothing": ""}


def failed_run(root, name="failed-run", models=("tiny-llama", "llama-1.1b"), ok_model=None):
    """A run folder whose records all ended in error before training (no train, no memory); `ok_model`'s cells
    finished, so one model has sizes and the others none."""
    machine, gpu = GPUS["h200"]
    folder = RunFolder(root / name)
    for model in models:
        for method in ("full", "lora"):
            status = "ok" if model == ok_model else "error"
            record = cell_record(machine, gpu, status, model=model, method=METHODS[method])
            write_json(folder.result_path(record.cell_hash), record)
    write_json(folder.root / "run.json", {"argv": [], "started_at": "2026-11-28T10:00:00", "env": {}})
    return folder


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out, captured.err


@pytest.mark.parametrize("ok_model", [None, "tiny-llama"], ids=["every-cell-failed", "one-model-failed"])
def test_a_report_of_failures_is_still_a_report(capsys, tmp_path, ok_model):
    folder = failed_run(tmp_path, ok_model=ok_model)
    code, out, _ = run_cli(capsys, "report", folder.root, "-o", tmp_path / "r.html")
    assert code == 0 and "wrote" in out
    assert "llama-1.1b" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_a_report_of_a_run_with_a_huge_seed_renders(capsys, tmp_path):
    folder = failed_run(tmp_path, ok_model="tiny-llama")
    path = next(folder.cells_dir.glob("*.json"))
    data = read_json(path)
    data["cell"]["seed"] = 2**70  # written before seeds were bounded
    write_json(path, data)
    code, out, err = run_cli(capsys, "report", folder.root, "-o", tmp_path / "r.html")
    assert code in (0, 2) and (code == 0 or err.startswith("error: ") and len(err.splitlines()) == 1)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
@pytest.mark.parametrize("command", ["report", "check", "accuracy"])
def test_a_damaged_cell_file_is_a_warning_naming_it(capsys, tmp_path, damage, command):
    folder = failed_run(tmp_path, ok_model="tiny-llama")
    bad = folder.cells_dir / "0123456789abcdef.json"
    bad.write_text(damage, encoding="utf-8")
    extra = {"report": ["-o", tmp_path / "r.html"], "check": ["--allow-missing"], "accuracy": []}[command]
    code, _, err = run_cli(capsys, command, folder.root, *extra)
    assert str(bad) in err
    lines = err.strip().splitlines()
    assert all(line.startswith(("warning:", "error:")) for line in lines if str(bad) in line)
    assert code in (0, 1, 2)


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_dry_run_names_a_damaged_cell_file_and_a_resume_sets_it_aside(capsys, monkeypatch, tmp_path, damage):
    grid = tmp_path / "grid.yaml"
    grid.write_text("defaults: {model: tiny-llama, steps: 1, warmup_steps: 1, batch_size: 1, seq_len: 8}\n"
                    "include: [{}]\n")  # fmt: skip
    run_dir = tmp_path / "run"
    (run_dir / "cells").mkdir(parents=True)
    bad = run_dir / "cells" / "0123456789abcdef.json"
    bad.write_text(damage, encoding="utf-8")
    code, out, err = run_cli(capsys, "run", "--matrix", grid, "--run-dir", run_dir, "--dry-run")
    assert code == 0 and f"warning: skipped {bad}" in err
    code, out, err = run_cli(capsys, "run", "--matrix", grid, "--run-dir", run_dir)
    assert code == 2 and err.startswith("error: ") and bad.name in err and len(err.splitlines()) == 1
    from bench.parent.runner import Runner, RunOptions
    from bench.spec import grid as grids

    runner = Runner(grids.load(str(grid)), RunOptions(run_dir=run_dir, mode="resume"))
    runner.groups = lambda cells: []  # plan and set aside; run no cell (the kill -9 test runs real ones)
    runner.run()
    assert not bad.exists() and bad.with_name(bad.name + ".unreadable").exists()
    assert "set aside" in capsys.readouterr().out


def test_a_second_run_into_a_folder_in_use_is_one_sentence_and_exit_2(capsys, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("defaults: {model: tiny-llama, steps: 1, warmup_steps: 1, batch_size: 1, seq_len: 8}\n"
                    "include: [{}]\n")  # fmt: skip
    run_dir = tmp_path / "run"
    with RunFolder(run_dir).lock():  # the first `bench run`, holding the folder (flock: another open file)
        code, _, err = run_cli(capsys, "run", "--matrix", grid, "--run-dir", run_dir)
    assert code == 2 and err.startswith("error: run folder") and "in use" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


def test_a_slimmed_study_extended_by_a_later_pass_keeps_both(tmp_path, cells_in_this_process):
    """A committed (slimmed) folder run again with new cells: the archive's records and the new cell files are one
    study, a cell file winning over the archive's record of the same hash, and slimming again folds them in. (The
    cells are measured in this process: the test is about the folder, not about cell processes.)"""
    import gzip
    import json

    from bench.records.folder import RunFolder
    from bench.tools import slim_run

    grid = tmp_path / "grid.yaml"
    grid.write_text("name: ext\ninclude:\n  - {model: tiny-llama, batch_size: 2, seq_len: 8, warmup_steps: 1, steps: 1, seed: [0, 1]}\n")
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--matrix", str(grid), "--run-dir", str(run_dir)]) == 0
    slim_run.slim(run_dir)
    before = RunFolder(run_dir).records()
    assert len(before) == 2 and not (run_dir / "cells").exists()
    grid.write_text(grid.read_text().replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    assert cli.main(["run", "--matrix", str(grid), "--run-dir", str(run_dir), "--resume"]) == 0
    after = RunFolder(run_dir).records()
    assert set(before) < set(after) and len(after) == 3  # the two archived cells were not run again
    assert {h: after[h].started_at for h in before} == {h: r.started_at for h, r in before.items()}
    import pandas as pd

    assert len(pd.read_parquet(run_dir / "results.parquet")) == 3  # the table holds the whole study
    slim_run.slim(run_dir)
    with gzip.open(run_dir / "records.jsonl.gz", "rt") as lines:
        assert len([json.loads(line) for line in lines]) == 3
