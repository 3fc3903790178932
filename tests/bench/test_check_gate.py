"""The CI memory gate for real: the committed CPU baseline against fresh processes measuring the CI grid.

Each run is one fresh process measuring every cell (tests/bench/gate_runs.py), then `bench check` against
bench/baselines/cpu.json. The deliberately heavier variant must fail the gate; the unchanged code must pass it
six runs in a row at zero tolerance, which shows that the CPU measure is exactly reproducible across processes. The six runs leave
out the torch.compile cell (half a minute of compilation each); the heavier-variant run and CI's own gate
(`python -m bench check` in .ci/run, one process per cell) include it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.views import check
from bench.spec import grid as matrix
from bench import cli

REPO = Path(__file__).resolve().parents[2]
BASELINES = check.BASELINES


def measure(grid: str, run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.bench.gate_runs", grid, str(run_dir), *extra],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # one torch thread: two of these processes share CI's two cores, and the measure counts bytes, not time
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def finished(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output


def gate(run_dir: Path, capsys, *extra: str) -> tuple[int, str]:
    code = cli.main(["check", str(run_dir), "--baselines", str(BASELINES), *extra])
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_a_heavier_variant_fails_the_gate_on_its_cells_only(tmp_path, capsys):
    finished(measure(check.CI_GRID, tmp_path / "heavier", "--heavier", "lora"))
    code, out = gate(tmp_path / "heavier", capsys)
    assert code == 1, out
    lines = out.splitlines()
    (regression,) = [line for line in lines if not line.startswith(("reports", str(tmp_path), "FAILED", "note"))]
    assert regression.startswith("REGRESSION  tiny-llama lora r=8 fp32 b2x32: "), out
    assert lines[-1] == f"FAILED: {len(matrix.load(check.CI_GRID).cells) - 1} ok, 1 regression", out


@pytest.mark.slow
def test_the_unchanged_code_passes_six_runs_in_a_row(tmp_path, capsys):
    text = (REPO / "bench" / "grids" / f"{check.CI_GRID}.yaml").read_text()
    grid = yaml.safe_load(text)
    grid["axes"]["method"] = [
        m for m in grid["axes"]["method"] if not (isinstance(m, dict) and m.get("impl") == "compiled")
    ]
    path = tmp_path / "ci-memory-eager.yaml"
    path.write_text(yaml.safe_dump(grid))
    runs = [tmp_path / f"run{i}" for i in range(6)]  # three pairs: enough to catch a flaky byte count, in CI's time
    for pair in (runs[i : i + 2] for i in range(0, len(runs), 2)):  # two at a time: CI has two cores
        for process in [measure(str(path), run) for run in pair]:
            finished(process)
    for run in runs:
        code, out = gate(run, capsys, "--rtol", "0", "--atol-bytes", "0")  # exactly the baseline's bytes
        assert code == 0, out
        assert out.splitlines()[-1] == f"passed: 1 missing, {len(matrix.load(str(path)).cells)} ok", out
