"""The slurm launcher: its settings (grid section and flags), the sbatch script submitit writes for a cell, and a
cell run as a job by submitit's LocalExecutor into the run folder, then kept by --resume."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.parent import launchers
from bench.records import table as results
from bench import cli
from bench.core.errors import BenchError
from bench.parent.launchers.slurm import SlurmLauncher
from bench.spec.slurm import SlurmConfig, SlurmFieldError, time_minutes

from .conftest import TINY, grid_from_text, one_cell

pytest.importorskip("submitit")

FAKE_SBATCH = """#!/bin/sh
# Records how it was called and the script it was given, and answers as sbatch does.
printf '%s\\n' "$@" > "{record}/args"
cat "$1" > "{record}/script.sh"
echo "Submitted batch job 4242"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A folder first on PATH with an `sbatch` that records its call and an `srun` (submitit checks it exists)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-call"
    bin_dir.mkdir()
    record.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(record=record)), ("srun", "#!/bin/sh\nexit 1\n")):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_sbatch_gets_the_partition_gpus_time_and_constraint_of_the_cell(tmp_path, fake_slurm):
    cell = one_cell(gpus=2, timeout_s=600)
    config = SlurmConfig(partition="gpu", constraint="h200", time="1:30:00", account="proj", cpus_per_task=16)
    job = SlurmLauncher(config).submit(tmp_path / "slurm", cell, tmp_path / "spec.json", tmp_path / "cell.log")
    assert job.job_id == "4242"
    script = (fake_slurm / "script.sh").read_text()
    (argument,) = (fake_slurm / "args").read_text().split()
    assert Path(argument).name.endswith(".sh")  # submitit passes the script as sbatch's one argument
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --constraint=h200",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --time=90",
        "#SBATCH --account=proj",
        "#SBATCH --cpus-per-task=16",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --job-name=bench-{cell.hash}",
    ):
        assert line in script.splitlines(), line
    assert "export PYTHONPATH=" in script and "submitit.core._submit" in script


def test_by_default_a_job_asks_for_the_cells_gpus_and_its_timeout_plus_a_margin(tmp_path, fake_slurm):
    SlurmLauncher(SlurmConfig()).submit(
        tmp_path / "slurm", one_cell(gpus=4, timeout_s=1800), tmp_path / "s", tmp_path / "l"
    )
    script = (fake_slurm / "script.sh").read_text().splitlines()
    assert "#SBATCH --gpus-per-node=4" in script and "#SBATCH --time=40" in script
    assert not any(line.startswith(("#SBATCH --partition", "#SBATCH --constraint")) for line in script)
    assert "gpus_per_node" not in SlurmConfig().job_parameters(one_cell(device="cpu"))


@pytest.mark.slow
def test_a_local_executor_job_runs_the_cell_into_the_run_folder_and_resume_keeps_it(tmp_path, write_grid, capsys):
    grid = write_grid(f"defaults: {TINY}\ninclude: [{{method: lora}}]\nslurm: {{executor: local, time: 10}}\n")
    run_dir = tmp_path / "run"
    argv = ["run", "--matrix", str(grid), "--run-dir", str(run_dir), "--launcher", "slurm"]
    assert cli.main(argv) == 0
    (record,) = RunFolder(run_dir).records().values()
    assert record.status == "ok" and record.train["tokens_per_s"] > 0
    assert record.run["slot"] == "slurm" and record.run["slurm_job_id"]
    jobs = sorted(p.name for p in (run_dir / "slurm").iterdir() if p.name.isdigit())
    assert jobs == [record.run["slurm_job_id"]]

    assert cli.main(argv + ["--resume"]) == 0
    assert "nothing to run; 1 finished cells kept" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "slurm").iterdir() if p.name.isdigit()) == jobs  # nothing submitted


def test_the_grid_slurm_section_is_checked_with_file_line_and_field():
    with pytest.raises(BenchError, match=r"^grid.yaml, line 3: slurm.time is '1h'; write minutes \(90\) or"):
        grid_from_text("axes: {method: [lora]}\nslurm:\n  time: 1h\n")
    with pytest.raises(
        BenchError,
        match=r"^grid.yaml, line 2: slurm.gpu is not a Slurm setting; allowed settings are partition, constraint, time",
    ):
        grid_from_text("axes: {method: [lora]}\nslurm: {gpu: h100}\n")
    with pytest.raises(BenchError, match=r"slurm.executor is 'dask'; allowed values are 'slurm', 'local'."):
        grid_from_text("axes: {method: [lora]}\nslurm: {executor: dask}\n")
    assert grid_from_text("axes: {method: [lora]}\nslurm: {partition: gpu, time: 30}\n").slurm == SlurmConfig(
        "gpu", time=30
    )


def test_without_sbatch_the_slurm_launcher_says_where_to_run_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    args = cli._parser().parse_args(["run", "--launcher", "slurm"])
    with pytest.raises(BenchError, match=r"^--launcher slurm finds no sbatch and srun on PATH; run it on a Slurm"):
        launchers.from_arguments(args, SlurmConfig())


def test_flags_override_the_grid_and_a_bad_flag_is_named(fake_slurm):
    grid = grid_from_text("axes: {method: [lora]}\nslurm: {partition: gpu, constraint: a100}\n")
    parser = cli._parser()
    args = parser.parse_args(["run", "--launcher", "slurm", "--slurm-constraint", "h200", "--slurm-gpus-per-node", "2"])
    launcher = launchers.from_arguments(args, grid.slurm)
    assert (launcher.config.partition, launcher.config.constraint, launcher.config.gpus_per_node) == ("gpu", "h200", 2)
    bad = parser.parse_args(["run", "--launcher", "slurm", "--slurm-time", "soon"])
    with pytest.raises(BenchError, match=r"^--slurm-time is 'soon'; write minutes"):
        launchers.from_arguments(bad, grid.slurm)
    assert (
        launcher.unavailable_reason(one_cell(gpus=4), []) == "the cell asks for 4 GPUs and slurm.gpus_per_node is 2"
    )


@pytest.mark.parametrize(
    "value, minutes", [(90, 90), ("90", 90), ("1:30:00", 90), ("0:00:30", 1), ("2-00:00:00", 2880)]
)
def test_time_limits_are_whole_minutes(value, minutes):
    assert time_minutes(value) == minutes


def test_a_time_limit_that_is_not_one_is_refused():
    with pytest.raises(SlurmFieldError, match="is '90m'"):
        time_minutes("90m")
