"""Launchers: the local pool hands a cell of N GPUs N GPUs of its own, a cell of several GPUs runs as ranks under
torchrun and its record covers every rank, and a killed cell leaves no rank behind."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil
import pytest

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.core import nvml
from bench.records import table as results
from bench.spec.cells import Cell
from bench.core.errors import BenchError
from bench.parent.launchers.local import kill_tree
from bench.parent.runner import Runner, RunOptions

from .conftest import grid_from_text, one_cell

FOUR = [nvml.Gpu(i, f"GPU-{i}", "NVIDIA H200", 141 * 2**30) for i in range(4)]


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(nvml, "gpus", lambda: FOUR)
    monkeypatch.setattr(nvml, "processes", lambda uuid: [])
    monkeypatch.setattr(nvml, "describe", lambda uuid: {"gpu_name": "NVIDIA H200", "gpu_uuid": uuid})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def record_spawns(monkeypatch) -> list[tuple[float, float, tuple[int, ...], dict]]:
    """Replace the cell's process by a short sleep; returns (start, end, GPU indices, record env) per cell."""
    spawns: list = []
    lock = threading.Lock()

    def fake_spawn(self, cell, slot, record):
        start = time.monotonic()
        time.sleep(0.15)
        with lock:
            spawns.append((start, time.monotonic(), tuple(g.index for g in slot.gpus), dict(record.env)))
        record.status = "ok"
        write_json(self.folder.result_path(cell.hash), record)
        return record

    monkeypatch.setattr(Runner, "_spawn", fake_spawn)
    return spawns


def test_a_cell_of_two_gpus_gets_two_of_its_own_and_one_gpu_cells_fill_the_rest(tmp_path, four_gpus, monkeypatch):
    spawns = record_spawns(monkeypatch)
    gpus_per_cell = [1, 2, 1, 1, 3, 1]
    grid = grid_from_text(
        "include:\n" + "".join(f"  - {{gpus: {n}, seed: {i}}}\n" for i, n in enumerate(gpus_per_cell))
    )
    Runner(grid, RunOptions(tmp_path)).run()
    assert sorted(len(gpus) for _, _, gpus, _ in spawns) == sorted(gpus_per_cell)
    for i, (start, end, gpus, _) in enumerate(spawns):
        for other_start, other_end, other_gpus, _ in spawns[i + 1 :]:
            if start < other_end and other_start < end:  # ran at the same time
                assert not set(gpus) & set(other_gpus), "two cells shared a GPU"
    assert max(sum(1 for s, e, _, _ in spawns if s <= t < e) for t, _, _, _ in spawns) >= 2  # cells run side by side
    gpus, env = next((gpus, env) for _, _, gpus, env in spawns if len(gpus) == 2)
    assert [g["gpu_uuid"] for g in env["gpus"]] == [f"GPU-{i}" for i in gpus]
    assert env["gpu"] == env["gpus"][0] and env["gpu_count"] == 2
    run = read_json(tmp_path / "run.json")
    assert run["launcher"] == "local" and run["wall_s"] > 0.15 and run["env"]["gpu_count"] == 4  # the machine's


def test_a_cell_asking_for_more_gpus_than_the_machine_has_is_skipped_without_a_process(tmp_path, four_gpus):
    grid = grid_from_text("include: [{gpus: 8}]\n")
    summary = Runner(grid, RunOptions(tmp_path)).run()
    (record,) = RunFolder(tmp_path).records().values()
    assert summary.counts == {"skipped": 1}
    assert record.reason == "the cell asks for 8 GPUs and this machine offers 4 (NVML, CUDA_VISIBLE_DEVICES)"


def test_killing_a_cell_kills_the_processes_it_started_in_sessions_of_their_own():
    grandchild = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "time.sleep(60)"
    )
    process = subprocess.Popen([sys.executable, "-c", grandchild], start_new_session=True)
    deadline = time.monotonic() + 20
    while not psutil.Process(process.pid).children() and time.monotonic() < deadline:
        time.sleep(0.05)
    (child,) = psutil.Process(process.pid).children()
    kill_tree(process)
    process.wait()
    _, alive = psutil.wait_procs([child], timeout=5)
    assert not alive


@pytest.mark.slow
def test_a_two_rank_cell_records_every_rank_and_an_oom_on_one_rank_makes_it_oom(tmp_path):
    grid = grid_from_text("""
        defaults: {model: tiny-llama, batch_size: 2, seq_len: 16, warmup_steps: 1, steps: 2, timeout_s: 150,
                   method: {name: randlora, r: 8}, gpus: 2}
        include: [{inject: none}, {inject: oom}]
    """)
    summary = Runner(grid, RunOptions(tmp_path)).run()
    records = {r.cell["inject"]: r for r in RunFolder(tmp_path).records().values()}
    assert summary.counts == {"ok": 1, "oom": 1}

    ok = records["none"]
    assert ok.train["tokens_per_step"] == 2 * 16 * 2  # both ranks' tokens
    times = ok.train["step_times_s"]
    assert ok.train["tokens_per_s"] == pytest.approx(64 * len(times) / sum(times))
    assert ok.train["tokens_per_s_per_gpu"] == pytest.approx(ok.train["tokens_per_s"] / 2)
    assert len(ok.train["replicated_sha256"]) == 64
    assert ok.device["world_size"] == 2 and ok.env["gpu_count"] == 0  # two CPU ranks over gloo
    per_rank = ok.memory["per_rank"]
    assert len(per_rank) == 2 and ok.memory["host_rss_peak_bytes"] == max(m["host_rss_peak_bytes"] for m in per_rank)
    assert ok.memory["param_bytes"] < ok.train["total_params"] * 4  # a rank holds its shards, not the model

    oom = records["oom"]
    assert oom.reason == "rank 1 of 2: OutOfMemoryError: injected by the grid (inject: oom)"
    assert oom.run["rank_outcomes"]["1"]["status"] == "oom" and "Traceback" in oom.traceback
    import pandas as pd

    frame = pd.read_parquet(summary.table)
    assert frame["gpus"].tolist() == [2, 2]


def test_one_gpu_keeps_the_hash_cells_had_before_the_field_and_more_gpus_change_it():
    cell = one_cell(method="lora")
    assert "gpus" not in cell.identity() and one_cell(method="lora", gpus=2).hash != cell.hash
    older = cell.to_dict()
    del older["gpus"]  # a record written before the field existed
    assert Cell.from_dict(older) == cell
    assert one_cell(method="lora", gpus=2).label().endswith("b2x16 2gpus")


def test_a_cell_asks_for_at_least_one_gpu():
    with pytest.raises(BenchError, match=r"^grid.yaml, line 1: defaults.gpus is 0; it must be an integer from 1 to 64.$"):
        grid_from_text("defaults: {gpus: 0}\naxes: {method: [lora]}\n")
