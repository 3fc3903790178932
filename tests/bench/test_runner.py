"""The parent: statuses through real processes, --resume after the harness is killed, modes, slots."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import torch

from bench import cli
from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.spec import grid as matrix
from bench.core import nvml
from bench.records import table as results
from bench.parent import runner
from bench.core.errors import BenchError
from bench.spec.methods import METHODS
from bench.parent.runner import Runner, RunOptions, Slot, slots_for

from .conftest import grid_from_text

TINY_DEFAULTS = (
    "{model: tiny-llama, batch_size: 1, seq_len: 8, warmup_steps: 1, steps: 2, timeout_s: 120, "
    "method: {name: lora, r: 2}}"
)


@pytest.fixture
def no_cuda_in_parent(monkeypatch):
    """Any torch.cuda call that could create a context in the parent fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the parent process touched torch.cuda")

    for name in ("is_available", "device_count", "init", "_lazy_init", "current_device"):
        monkeypatch.setattr(torch.cuda, name, refuse)


@pytest.mark.slow
def test_every_status_is_recorded_and_the_run_goes_on(tmp_path, no_cuda_in_parent, monkeypatch):
    from bench.parent.launchers.local import LocalLauncher

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # three cell processes at once on CI's two cores, a thread each
    grid = grid_from_text(f"""
        defaults: {TINY_DEFAULTS}
        include:
          - {{inject: oom, batch_size: [1, 2]}}
          - {{inject: error}}
          - {{inject: nan}}
          - {{inject: hang, timeout_s: 6}}
          - {{}}
    """)
    summary = Runner(grid, RunOptions(tmp_path, launcher=LocalLauncher(cells_per_gpu=3))).run()
    records = {
        r.cell["inject"] + str(r.cell["batch_size"]): r for r in RunFolder(tmp_path).records().values()
    }
    assert {k: r.status for k, r in records.items()} == {
        "oom1": "oom",
        "oom2": "skipped",
        "error1": "error",
        "nan1": "diverged",
        "hang1": "timeout",
        "none1": "ok",
    }
    assert records["oom2"].reason.startswith("batch size 1 of the same configuration ran out of memory")
    assert records["error1"].reason == "RuntimeError: injected by the grid (inject: error)"
    assert "Traceback" in records["error1"].traceback and "Traceback" in records["oom1"].traceback
    assert records["nan1"].reason == "the loss is nan at warm-up step 1 of 1"
    assert records["hang1"].reason == "no result after 6 s; the cell's processes were killed"
    assert records["none1"].train["tokens_per_s"] > 0 and records["none1"].env["git_commit"] is not None
    assert not Path(records["oom2"].run["log"]).exists()  # skipped without a process
    assert summary.exit_code == 1 and summary.counts == {
        "oom": 1,
        "skipped": 1,
        "error": 1,
        "diverged": 1,
        "timeout": 1,
        "ok": 1,
    }
    import pandas as pd

    frame = pd.read_parquet(summary.table)
    assert sorted(frame["status"]) == sorted(STATUSES)  # every status the schema documents, once


def _cell_processes(run_dir: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "bench.worker" in cmdline and str(run_dir) in cmdline:
            found.append(process)
    return found


@pytest.mark.slow
def test_resume_after_the_harness_is_killed_loses_no_finished_cell(tmp_path, write_grid, capsys):
    path = write_grid(f"defaults: {TINY_DEFAULTS}\naxes: {{seed: [0, 1]}}\n")
    run_dir = tmp_path / "run"
    argv = ["run", "--matrix", str(path), "--run-dir", str(run_dir)]
    command = [sys.executable, "-m", "bench", *argv]
    harness = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cells_dir = run_dir / "cells"
    deadline = time.monotonic() + 180
    while not list(cells_dir.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(harness.pid, signal.SIGKILL)
    harness.wait()
    finished = {p.name: p.read_bytes() for p in cells_dir.glob("*.json")}
    assert len(finished) == 1  # the second cell was running (its process needs longer than the 0.2 s poll)
    assert not (run_dir / "results.parquet").exists()  # removed while cells changed: never a stale table

    _, alive = psutil.wait_procs(_cell_processes(run_dir), timeout=5)  # a cell needs longer than 5 s to finish
    alive = [p for p in alive if _running(p)]  # an exited process nobody reaped yet (a zombie) has stopped
    assert not alive  # an orphaned cell stops by itself instead of finishing behind the next run's back
    assert {p.name for p in cells_dir.glob("*.json")} == set(finished)

    code = cli.main([*argv, "--resume"])  # the second harness in this process; its cell in a process of its own
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"{len(finished)} finished cells kept" in out
    after = {p.name: p.read_bytes() for p in cells_dir.glob("*.json")}
    assert len(after) == 2 and all(r.status == "ok" for r in RunFolder(run_dir).records().values())
    assert {name: after[name] for name in finished} == finished  # kept byte for byte, not run again
    table = pd.read_parquet(run_dir / "results.parquet")
    assert sorted(table["cell_hash"]) == sorted(Path(name).stem for name in after)  # rows = the cell files


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def fake_records(folder: RunFolder, grid: matrix.Grid, statuses: list[str]) -> None:
    for cell, status in zip(grid.cells, statuses):
        record = Record.new(cell, env={}, run={})
        record.status = status
        write_json(folder.result_path(cell.hash), record)


FIVE = "axes: {method: [lora], seed: [0, 1, 2, 3, 4]}"


def test_a_new_run_refuses_a_folder_with_results_of_its_grid(tmp_path):
    grid = grid_from_text(FIVE)
    fake_records(RunFolder(tmp_path), grid, ["ok"])
    with pytest.raises(BenchError, match=r"already holds 1 results of this grid; pass --resume"):
        Runner(grid, RunOptions(tmp_path)).plan()


@pytest.mark.parametrize(
    "mode, runs",
    [
        ("resume", [4]),
        ("rerun-failed", [1, 2, 4]),
        ("force", [0, 1, 2, 3, 4]),
    ],
)
def test_modes_choose_which_cells_run_again(tmp_path, mode, runs):
    grid = grid_from_text(FIVE)
    fake_records(RunFolder(tmp_path), grid, ["ok", "error", "timeout", "oom"])  # the fifth never ran
    todo, kept = Runner(grid, RunOptions(tmp_path, mode=mode)).plan()
    assert [c.seed for c in todo] == runs
    assert len(kept) == 5 - len(runs)


def test_only_narrows_the_cells_to_run_by_label_or_hash_and_keeps_the_mode(tmp_path):
    grid = grid_from_text("axes: {method: [lora, full], batch_size: [1, 2]}")
    lora_b1, lora_b2, full_b1, full_b2 = grid.cells
    fake_records(RunFolder(tmp_path), grid, ["ok", "error", "ok"])  # full b2 never ran
    todo, kept = Runner(grid, RunOptions(tmp_path, mode="resume", only=("full",))).plan()
    assert todo == [full_b2] and len(kept) == 3
    todo, _ = Runner(grid, RunOptions(tmp_path, mode="force", only=(lora_b2.hash[:6], "full fp32 b1"))).plan()
    assert todo == [lora_b2, full_b1]


@pytest.mark.parametrize("field", ["only", "profile"])
def test_a_selector_that_names_no_cell_is_refused(tmp_path, field):
    grid = grid_from_text("axes: {method: [lora, full]}")
    options = RunOptions(tmp_path, **{field: ("lora", "randlora")})
    with pytest.raises(BenchError, match=rf"--{field} 'randlora' names no cell of this grid; give a part"):
        Runner(grid, options).plan()


def test_an_oom_kept_from_an_earlier_run_skips_larger_batches_of_its_group(tmp_path):
    grid = grid_from_text("axes: {method: [lora, full], batch_size: [1, 2]}")
    lora_b1 = grid.cells[0]
    record = Record.new(lora_b1, env={}, run={})
    record.status = "oom"
    write_json(RunFolder(tmp_path).result_path(lora_b1.hash), record)
    run = Runner(grid, RunOptions(tmp_path, mode="resume"))
    todo, _ = run.plan()
    reasons = {c.label(): run._skip_reason(c, oom_at=None) for c in todo}
    assert reasons == {
        "tiny-llama lora r=16 fp32 b2x128": "batch size 1 of the same configuration ran out of memory",
        "tiny-llama full fp32 b1x128": None,
        "tiny-llama full fp32 b2x128": None,
    }


def test_a_method_whose_package_is_missing_is_skipped_without_a_process(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "peft-lora", dataclasses.replace(METHODS["peft-lora"], requires="no_such_package_x"))
    grid = grid_from_text("axes: {method: [peft-lora]}")
    summary = Runner(grid, RunOptions(tmp_path)).run()
    (record,) = RunFolder(tmp_path).records().values()
    assert (record.status, summary.counts) == ("skipped", {"skipped": 1})
    assert record.reason == (
        "method 'peft-lora' needs the 'no_such_package_x' package, which is not installed "
        "(pip install no_such_package_x)"
    )
    assert not (tmp_path / "logs").exists()


GPUS = [nvml.Gpu(0, "GPU-aaaa", "NVIDIA H200", 141 * 2**30), nvml.Gpu(1, "GPU-bbbb", "NVIDIA H200", 141 * 2**30)]


@pytest.mark.parametrize(
    "visible, slots",
    [
        (None, ["gpu0", "gpu1"]),
        ("1", ["gpu1"]),
        ("GPU-bb", ["gpu1"]),
        ("0,1", ["gpu0", "gpu1"]),
        ("", ["host"]),
    ],
)
def test_slots_follow_cuda_visible_devices(visible, slots):
    assert [s.name for s in slots_for(GPUS, visible)] == slots


def test_a_gpu_slot_exposes_its_gpus_by_uuid_and_the_host_slot_changes_nothing():
    assert Slot((GPUS[1],)).env() == {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}
    assert (
        Slot(tuple(GPUS)).env() == {"CUDA_VISIBLE_DEVICES": "GPU-aaaa,GPU-bbbb"}
        and Slot(tuple(GPUS)).name == "gpu0+gpu1"
    )
    assert slots_for([], None) == [Slot()] and Slot().env() == {}


def test_cells_spread_one_per_gpu_and_a_busy_gpu_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml, "gpus", lambda: GPUS)
    monkeypatch.setattr(
        nvml, "processes", lambda uuid: [{"pid": 4242, "used_bytes": 2**30}] if uuid == "GPU-bbbb" else []
    )
    running: dict[str, int] = {}
    seen: list[tuple[str, str]] = []
    lock = threading.Lock()

    def fake_spawn(self, cell, slot, record):
        with lock:
            running[slot.name] = running.get(slot.name, 0) + 1
            assert running[slot.name] == 1, "two cells on one GPU"
            seen.append((slot.name, record.run["gpu_busy"]))
        time.sleep(0.05)
        with lock:
            running[slot.name] -= 1
        record.status = "ok"
        write_json(self.folder.result_path(cell.hash), record)
        return record

    monkeypatch.setattr(Runner, "_spawn", fake_spawn)
    grid = grid_from_text("axes: {method: [lora, full], seed: [0, 1, 2, 3]}")
    Runner(grid, RunOptions(tmp_path)).run()
    assert {slot for slot, _ in seen} == {"gpu0", "gpu1"} and len(seen) == 8
    assert all(busy == (slot == "gpu1") for slot, busy in seen)


def test_cells_per_gpu_lets_that_many_cells_share_a_gpu_and_fills_the_least_busy_gpu_first(tmp_path, monkeypatch):
    from bench.parent.launchers.local import LocalLauncher

    monkeypatch.setattr(nvml, "gpus", lambda: GPUS)
    monkeypatch.setattr(nvml, "processes", lambda uuid: [])
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    first_two: list[str] = []
    lock = threading.Lock()
    release = threading.Event()

    def fake_spawn(self, cell, slot, record):
        with lock:
            running[slot.name] = running.get(slot.name, 0) + 1
            most[slot.name] = max(most.get(slot.name, 0), running[slot.name])
            if len(first_two) < 2:
                first_two.append(slot.name)
            if sum(running.values()) == 6:  # every place taken at once: let them all finish
                release.set()
        release.wait(5)
        with lock:
            running[slot.name] -= 1
        record.status = "ok"
        assert record.run["cells_per_gpu"] == 3
        write_json(self.folder.result_path(cell.hash), record)
        return record

    monkeypatch.setattr(Runner, "_spawn", fake_spawn)
    grid = grid_from_text("axes: {method: [lora, full], seed: [0, 1, 2, 3, 4, 5]}")
    Runner(grid, RunOptions(tmp_path, launcher=LocalLauncher(cells_per_gpu=3))).run()
    assert release.is_set() and most == {"gpu0": 3, "gpu1": 3}
    assert sorted(first_two) == ["gpu0", "gpu1"]
    assert pd.read_parquet(tmp_path / "results.parquet")["cells_per_gpu"].eq(3).all()


def test_cells_per_gpu_must_be_at_least_one():
    from bench.parent.launchers.local import LocalLauncher

    with pytest.raises(BenchError, match="--cells-per-gpu is 0"):
        LocalLauncher(cells_per_gpu=0)


def test_a_process_that_dies_silently_is_an_error_naming_how_and_its_last_log_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("loading\nSegmentation fault (core dumped)\n\n")
    assert runner._died_reason(-11, log) == (
        "the cell's process was killed by signal 11 without writing a result; "
        "its log ends: Segmentation fault (core dumped)"
    )
    assert (
        runner._died_reason(3, tmp_path / "missing.log")
        == "the cell's process exited with code 3 without writing a result"
    )


def test_a_process_gone_on_the_second_look_does_not_make_the_gpu_busy(monkeypatch):
    answers = iter([[{"pid": 7, "used_bytes": 1}], []])
    monkeypatch.setattr(nvml, "processes", lambda uuid: next(answers))
    monkeypatch.setattr(runner, "BUSY_RECHECK_S", 0.0)
    assert runner._other_processes(Slot((GPUS[0],))) == []
    assert runner._other_processes(Slot()) == []


def _sigint_as_in_a_terminal() -> None:
    """The harness's SIGINT at its default, as a terminal's foreground job has it: a test run in the background of
    a non-interactive shell inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_an_interrupted_run_records_no_error_for_the_cells_it_stopped(tmp_path, write_grid):
    """Ctrl-C (SIGINT) stops the run: the cell it killed stays unfinished (no record), for --resume, instead of
    being recorded as an error that --resume would keep."""
    path = write_grid(f"defaults: {TINY_DEFAULTS}\ninclude: [{{inject: hang, timeout_s: 600}}]\n")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "bench", "run", "--matrix", str(path), "--run-dir", str(run_dir)]
    harness = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=_sigint_as_in_a_terminal
    )
    deadline = time.monotonic() + 120
    while not list((run_dir / "specs").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)  # the cell's process is up and hanging
    harness.send_signal(signal.SIGINT)
    output, _ = harness.communicate(timeout=120)
    assert harness.returncode == 130, output
    assert not list((run_dir / "cells").glob("*.json")), output
