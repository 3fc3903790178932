"""The command line: help that explains itself, list, env, dry runs, the run folder's name."""

from __future__ import annotations

import pytest

from bench import cli


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # --help
        code = exc.code
    return code, capsys.readouterr().out


def test_help_names_the_commands_and_the_main_command(capsys):
    code, out = run_cli(capsys, "--help")
    assert code == 0
    assert "{run,report,check,compare,accuracy,env,list}" in out and "python -m bench run --matrix default" in out


def test_run_help_explains_statuses_injection_and_exit_codes(capsys):
    code, out = run_cli(capsys, "run", "--help")
    assert code == 0
    for text in (
        "--resume",
        "--rerun-failed",
        "--force",
        "--dry-run",
        "--profile",
        "--measure-ceiling",
        "inject: oom | error | nan | hang",
        "timeout",
        "diverged",
        "exit codes",
        "results.parquet",
    ):
        assert text in out, text


def test_list_prints_presets_methods_precisions_tasks_and_fields(capsys):
    code, out = run_cli(capsys, "list")
    assert code == 0
    for text in ("llama-8b", "7,241.7M", "tiny-vit", "peft-randlora", "bf16-amp", "throughput", "timeout_s", "default"):
        assert text in out, text


def test_list_can_print_one_section(capsys):
    code, out = run_cli(capsys, "list", "precisions")
    assert code == 0 and out.startswith("precisions:") and "presets" not in out


def test_env_prints_the_host_and_says_when_there_is_no_gpu(capsys):
    code, out = run_cli(capsys, "env")
    assert code == 0 and "torch_version" in out and "git_commit" in out
    assert "none found through NVML" in out or "gpu 0" in out


def test_a_dry_run_lists_every_cell_with_its_hash_and_runs_nothing(capsys, tmp_path):
    code, out = run_cli(capsys, "run", "--matrix", "default", "--dry-run", "--run-dir", str(tmp_path / "r"))
    lines = out.splitlines()
    assert code == 0 and len(lines) == 24 and lines[-1].startswith("22 cells from bench/grids/default.yaml")
    assert lines[0].startswith("dry run: the cells of bench/grids/default.yaml") and "nothing runs" in lines[0]
    assert lines[1].split()[0].isalnum() and len(lines[1].split()[0]) == 12
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("gpus", [4, 8])
def test_a_dry_run_of_the_70b_grids_lists_five_methods_on_a_machine_without_gpus(capsys, tmp_path, monkeypatch, gpus):
    from bench.spec import presets

    def no_build(*args, **kwargs):
        raise AssertionError("a dry run built a model")

    monkeypatch.setattr(presets, "build", no_build)
    grid = f"bench/grids/h200x{gpus}-70b.yaml"
    code, out = run_cli(capsys, "run", "--matrix", grid, "--dry-run", "--run-dir", str(tmp_path / "r"))
    labels = [" ".join(line.split()[2:]) for line in out.splitlines()[1:-1]]
    assert code == 0 and out.splitlines()[-1].startswith(f"5 cells from {grid}")
    assert sorted(label.split()[1] for label in labels) == [
        "full", "lora", "peft-lora", "randlora.compiled", "randlora.eager"
    ]  # fmt: skip
    assert all(label.startswith("llama-70b ") and label.endswith(f" bf16 b1x1024 {gpus}gpus") for label in labels)
    assert not (tmp_path / "r").exists()

def test_a_dry_run_with_only_lists_the_cells_it_would_run(capsys, tmp_path):
    argv = ("run", "--matrix", "default", "--dry-run", "--only", "randlora", "--run-dir", str(tmp_path))
    code, out = run_cli(capsys, *argv)
    cells = out.splitlines()[1:-1]
    assert code == 0 and cells and all("randlora" in line for line in cells)
    code, out = run_cli(capsys, "run", "--matrix", "default", "--dry-run", "--only", "no-such-method")
    assert code == 2


def test_name_chooses_the_run_folder_under_runs(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(capsys, "run", "--matrix", "default", "--dry-run", "--name", "mine")
    assert code == 0 and out.splitlines()[-1].endswith("run folder runs/mine (0 finished)")


@pytest.mark.parametrize("argv", [["run", "--matrix"], ["lists"], ["list", "nothing"]])
def test_bad_arguments_exit_2(capsys, argv):
    assert run_cli(capsys, *argv)[0] == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cells-per-gpu", "0"], "error: --cells-per-gpu is 0; it must be a whole number of at least 1."),
        (
            ["--launcher", "slurm", "--cells-per-gpu", "2"],
            "error: --cells-per-gpu applies to --launcher local only; a Slurm job holds its GPUs alone.",
        ),
    ],
)
def test_a_bad_cells_per_gpu_is_one_sentence_and_exit_2(tmp_path, capsys, flags, message):
    code = cli.main(["run", "--matrix", "default", "--run-dir", str(tmp_path / "r"), *flags])
    assert code == 2 and capsys.readouterr().err.strip() == message
    assert not (tmp_path / "r").exists()  # nothing started, nothing written


def test_a_dry_run_estimates_the_duration_only_from_cells_finished_in_the_folder():
    from types import SimpleNamespace

    finished = {h: SimpleNamespace(run={"wall_s": s}) for h, s in (("a", 10.0), ("b", 30.0), ("c", 20.0))}
    assert cli._estimate(finished, 6) == "; ~6 cells × 20 s (median wall time of the 3 finished here) ≈ 2 min"
    assert cli._estimate({}, 6) == ""
    assert cli._estimate({"a": SimpleNamespace(run={})}, 6) == ""
