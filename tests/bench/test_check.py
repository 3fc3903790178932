"""`bench check`: cells matched by memory key, tolerances, verdict lines and exit codes, baselines per device class."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.views import check
from bench.spec import grid as matrix
from bench.records import table as results
from bench import cli
from bench.core.errors import BenchError

from .conftest import one_cell

REPO = Path(__file__).resolve().parents[2]
MEMORY = {"param_bytes": 1000, "grad_bytes": 100, "optimizer_bytes": 200, "activation_bytes": 700}  # 2000 counted
H200 = {"gpu_name": "NVIDIA H200", "gpu_uuid": "GPU-1"}


def record(status: str = "ok", memory: dict | None = None, gpu: dict | None = None, **fields) -> dict:
    cell = one_cell(**fields)
    rec = Record.new(cell, {"hostname": "h", "torch_version": "2.13.0", "gpu": gpu}, {"run_name": "t"})
    rec.complete({"status": status, "memory": dict(MEMORY if memory is None else memory)})
    rec.device = {"device": "cuda" if gpu else "cpu"}
    rec.reason = "" if status == "ok" else f"why it is {status}"
    return rec


def write_run(root: Path, records: list[dict]) -> list[RunFolder]:
    """A run folder holding `records`, in a list as `check` takes them."""
    folder = RunFolder(root)
    for rec in records:
        write_json(folder.result_path(rec.cell_hash), rec)
    return [folder]


def verdict(folders: list[RunFolder], baselines: Path, **tolerance) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = check.check(folders, baselines, tolerance.get("rtol"), tolerance.get("atol_bytes"), out=out)
    return code, out.getvalue().splitlines()


def test_the_memory_key_ignores_what_cannot_change_memory_and_keeps_the_rest():
    base = one_cell(method="lora").to_dict()
    same = one_cell(method="lora", steps=7, warmup_steps=3, lr=0.5, timeout_s=9, device="cpu").to_dict()
    assert check.memory_key(base) == check.memory_key(same)
    for other in ({"batch_size": 3}, {"precision": "bf16"}, {"method": {"name": "lora", "r": 4}}, {"seq_len": 9}):
        assert check.memory_key(one_cell(**{"method": "lora", **other}).to_dict()) != check.memory_key(base), other


def test_counted_bytes_sums_the_breakdown_and_is_none_when_a_part_is_missing():
    assert check.counted_bytes(MEMORY) == 2000
    assert check.counted_bytes({**MEMORY, "grad_bytes": None}) is None


def test_device_classes_name_their_baseline_files(tmp_path):
    assert check.device_class(record()) == "cpu"
    assert check.device_class(record(gpu=H200)) == "NVIDIA H200"
    assert check.baseline_path(tmp_path, "NVIDIA H200") == tmp_path / "nvidia-h200.json"
    assert check.metric_for("cpu") == "counted_bytes" and check.metric_for("NVIDIA H200") == "peak_allocated_bytes"


def test_an_updated_baseline_holds_every_cell_by_memory_key(tmp_path):
    recs = [record(method="lora"), record(method="full"), record(status="oom", memory={}, method="randlora")]
    (path,) = check.update(write_run(tmp_path / "run", recs), tmp_path / "bl", None, None)
    data = json.loads(path.read_text())
    assert path.name == "cpu.json" and data["device_class"] == "cpu" and data["metric"] == "counted_bytes"
    assert (data["rtol"], data["atol_bytes"]) == check.DEFAULT_TOLERANCE["counted_bytes"]
    assert data["cells"] == {
        check.memory_key(r.cell): {"label": r.label, "status": r.status, "bytes": b}
        for r, b in zip(recs, (2000, 2000, None))
    }


def test_updating_from_a_run_with_failed_cells_is_refused(tmp_path):
    folder = write_run(tmp_path / "run", [record(), record(status="error", method="full")])
    with pytest.raises(BenchError, match="rerun them"):
        check.update(folder, tmp_path / "bl", None, None)


def test_an_unchanged_run_passes(tmp_path):
    folder = write_run(tmp_path / "run", [record(method="lora"), record(method="full")])
    check.update(folder, tmp_path / "bl", None, None)
    code, lines = verdict(folder, tmp_path / "bl")
    assert code == 0 and lines[-1] == "passed: 2 ok"


def test_growth_beyond_the_tolerance_fails_with_one_line_naming_the_cell(tmp_path):
    check.update(
        write_run(tmp_path / "before", [record(method="lora"), record(method="full")]), tmp_path / "bl", 0.01, 16
    )
    heavier = {**MEMORY, "activation_bytes": 700 + 37}  # 2037 > 2000 + 16 + 1 % of 2000
    code, lines = verdict(
        write_run(tmp_path / "after", [record(method="lora", memory=heavier), record(method="full")]), tmp_path / "bl"
    )
    assert code == 1
    (line,) = [line for line in lines if line.startswith("REGRESSION")]
    assert line == (
        "REGRESSION  tiny-llama lora r=16 fp32 b2x16: 2,037 B, baseline 2,000 B (+37 B, +1.85%; allowed +36 B)"
    )
    assert lines[-1] == "FAILED: 1 ok, 1 regression"


def test_growth_within_the_relative_and_absolute_tolerance_passes(tmp_path):
    check.update(write_run(tmp_path / "before", [record()]), tmp_path / "bl", 0.01, 16)
    within = {**MEMORY, "activation_bytes": 700 + 36}
    assert verdict(write_run(tmp_path / "after", [record(memory=within)]), tmp_path / "bl")[0] == 0
    assert (
        verdict(write_run(tmp_path / "strict", [record(memory=within)]), tmp_path / "bl", rtol=0.0, atol_bytes=0)[0]
        == 1
    )


def test_new_and_missing_cells_are_listed_but_pass(tmp_path):
    check.update(
        write_run(tmp_path / "before", [record(method="lora"), record(method="full")]), tmp_path / "bl", None, None
    )
    code, lines = verdict(
        write_run(tmp_path / "after", [record(method="lora"), record(method="lora", batch_size=4)]), tmp_path / "bl"
    )
    assert code == 0
    assert "NEW         tiny-llama lora r=16 fp32 b4x16: 2,000 B; not in the baseline" in lines
    assert "MISSING     tiny-llama full fp32 b2x16: in the baseline, not in this run" in lines


def test_a_cell_that_now_runs_out_of_memory_fails_and_an_expected_oom_passes(tmp_path):
    before = [record(method="lora"), record(status="oom", memory={}, method="full")]
    check.update(write_run(tmp_path / "before", before), tmp_path / "bl", None, None)
    after = [record(status="oom", memory={}, method="lora"), record(status="oom", memory={}, method="full")]
    code, lines = verdict(write_run(tmp_path / "after", after), tmp_path / "bl")
    assert code == 1
    assert [line.split()[0] for line in lines[1:-1]] == ["OOM"]
    assert "the baseline measured 2,000 B" in lines[1]


def test_a_cell_that_errors_is_unmeasured_and_fails(tmp_path):
    check.update(write_run(tmp_path / "before", [record()]), tmp_path / "bl", None, None)
    code, lines = verdict(write_run(tmp_path / "after", [record(status="error")]), tmp_path / "bl")
    assert code == 1 and lines[1].startswith("UNMEASURED") and "why it is error" in lines[1]


def test_a_smaller_cell_passes_and_suggests_an_update(tmp_path):
    check.update(write_run(tmp_path / "before", [record()]), tmp_path / "bl", None, None)
    code, lines = verdict(
        write_run(tmp_path / "after", [record(memory={**MEMORY, "activation_bytes": 0})]), tmp_path / "bl"
    )
    assert code == 0 and lines[1].startswith("SMALLER") and "update the baseline" in lines[1]


def test_a_device_class_without_a_baseline_fails_closed_with_a_message(tmp_path):
    code, lines = verdict(write_run(tmp_path / "run", [record(gpu=H200)]), tmp_path / "bl")
    assert code == 1
    assert lines == [
        (
            f"FAILED: no baseline for device class 'NVIDIA H200' ({tmp_path / 'bl' / 'nvidia-h200.json'} does not "
            f"exist); take one on purpose with: python -m bench check {tmp_path / 'run'} --update-baseline"
        )
    ]


def test_a_gpu_run_is_gated_on_max_memory_allocated(tmp_path):
    gpu_memory = {**MEMORY, "peak_allocated_bytes": 10 * 2**30}
    check.update(write_run(tmp_path / "before", [record(gpu=H200, memory=gpu_memory)]), tmp_path / "bl", None, None)
    data = json.loads((tmp_path / "bl" / "nvidia-h200.json").read_text())
    assert data["metric"] == "peak_allocated_bytes" and next(iter(data["cells"].values()))["bytes"] == 10 * 2**30
    more = {**gpu_memory, "peak_allocated_bytes": 11 * 2**30}
    assert verdict(write_run(tmp_path / "after", [record(gpu=H200, memory=more)]), tmp_path / "bl")[0] == 1


def test_the_command_line_updates_then_checks(tmp_path, capsys):
    run = write_run(tmp_path / "run", [record(method="lora")])[0].root
    bl = str(tmp_path / "bl")
    assert cli.main(["check", str(run), "--baselines", bl, "--update-baseline"]) == 0
    assert cli.main(["check", str(run), "--baselines", bl]) == 0
    assert cli.main(["check", str(run), "--baselines", bl, "--rtol", "-1"]) == 2
    assert cli.main(["check", str(tmp_path / "nothing"), "--baselines", bl]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_the_committed_cpu_baseline_holds_exactly_the_ci_grid():
    baseline = check.Baseline.read(check.BASELINES / "cpu.json")
    grid = matrix.load(check.CI_GRID)
    assert baseline.metric == "counted_bytes"
    assert set(baseline.cells) == {check.memory_key(c.to_dict()) for c in grid.cells}
    assert all(c["status"] == "ok" and c["bytes"] > 0 for c in baseline.cells.values())


def test_several_run_folders_make_one_baseline_and_a_repeated_configuration_is_refused(tmp_path):
    folders = write_run(tmp_path / "a", [record(method="lora")]) + write_run(tmp_path / "b", [record(method="full")])
    (path,) = check.update(folders, tmp_path / "bl", None, None)
    assert len(json.loads(path.read_text())["cells"]) == 2
    longer = write_run(tmp_path / "c", [record(method="lora", steps=5)])  # the same memory key as folder a's cell
    with pytest.raises(BenchError, match="differ only in fields that do not change memory"):
        check.update(folders + longer, tmp_path / "bl", None, None)


def test_allow_missing_turns_a_missing_baseline_into_a_message(tmp_path):
    out = io.StringIO()
    folders = write_run(tmp_path / "run", [record(gpu=H200)])
    assert check.check(folders, tmp_path / "bl", None, None, out=out, allow_missing=True) == 0
    assert out.getvalue().startswith("skipped: no baseline for device class 'NVIDIA H200'")


def test_a_run_sharing_no_cell_with_its_baseline_fails_the_gate(tmp_path):
    check.update(write_run(tmp_path / "before", [record(method="lora")]), tmp_path / "bl", None, None)
    code, lines = verdict(write_run(tmp_path / "after", [record(method="full")]), tmp_path / "bl")
    assert code == 1 and lines[-1].startswith("FAILED: the run shares no cell with")


@pytest.mark.parametrize(
    "text, field",
    [("", "cannot be read"), ("[]", "JSON list"), ('{"version": 1, "metric": "counted_bytes", "rtol": -1}', "rtol"),
     ('{"version": 1, "metric": "counted_bytes", "rtol": "x"}', "rtol"),
     ('{"version": 1, "metric": "counted_bytes", "rtol": 0.1, "atol_bytes": 0, "device_class": "cpu", '
      '"cells": {"k": {"label": "a", "status": "ok", "bytes": "12"}}}', "cell 'k'")],
)
def test_a_malformed_baseline_is_one_sentence_naming_the_file(tmp_path, text, field):
    path = tmp_path / "cpu.json"
    path.write_text(text)
    with pytest.raises(BenchError, match=field) as caught:
        check.Baseline.read(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_the_gate_finds_its_baselines_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check.BASELINES.is_absolute() and (check.BASELINES / "cpu.json").is_file()
