"""Every way a grid can be wrong is reported before anything runs: file, line, field, allowed values; exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.spec import grid as matrix
from bench import cli
from bench.core.errors import BenchError
from bench.core.yamlfile import Source

PRECISIONS = "'fp32', 'tf32', 'bf16', 'fp16-amp', 'bf16-amp'"
METHODS = "'full', 'lora', 'randlora', 'peft-lora', 'peft-lora-liger', 'peft-randlora', 'peft-vera'"
TOP_LEVEL = "name, description, defaults, axes, include, exclude, slurm"

# (grid text, the exact message)
EXACT = {
    "yaml syntax": (
        "axes:\n  method: full\n bad: 1\n",
        "grid.yaml, line 3: the YAML does not parse (expected <block end>, but found '<block mapping start>').",
    ),
    "duplicate key": (
        "axes:\n  method: [full]\naxes:\n  method: [lora]\n",
        "grid.yaml, line 3: key 'axes' is written twice.",
    ),
    "unknown top-level key": (
        "axis:\n  method: [full]\n",
        f"grid.yaml, line 1: axis is not a grid key; allowed keys are {TOP_LEVEL}.",
    ),
    "not a mapping": ("- a\n", f"grid.yaml: the grid must be a mapping with keys {TOP_LEVEL}."),
    "no cells": ("name: x\n", "grid.yaml: the grid defines no cells; add 'axes' or 'include'."),
    "everything excluded": (
        "axes: {method: [full]}\nexclude:\n  - {method: full}\n",
        "grid.yaml: the grid defines no cells (every combination is excluded).",
    ),
    "bad precision": (
        "axes:\n  precision: [fp32, fp8]\n",
        f"grid.yaml, line 2: axes.precision[1] is 'fp8'; allowed values are {PRECISIONS}.",
    ),
    "unknown method": (
        "axes:\n  method:\n    - full\n    - qlora\n",
        f"grid.yaml, line 4: axes.method[1] names method 'qlora'; allowed values are {METHODS}.",
    ),
    "peft parameter value": (
        "axes:\n  method:\n    - {name: peft-randlora, basis: normal}\n",
        "grid.yaml, line 3: axes.method[0] is not a valid 'peft-randlora' method: "
        "peft-randlora.basis is 'normal'; allowed values are 'uniform', 'sparse', 'very_sparse'.",
    ),
    "peft unknown parameter": (
        "axes:\n  method:\n    - {name: peft-lora, impl: eager}\n",
        "grid.yaml, line 3: axes.method[0] is not a valid 'peft-lora' method: "
        "peft-lora has no parameter 'impl'; allowed parameters are alpha, dropout, r.",
    ),
    "targets inside a method": (
        "axes:\n  method:\n    - {name: lora, target_modules: [q_proj]}\n",
        "grid.yaml, line 3: axes.method[0] is not a valid 'lora' method: target_modules is set "
        "per cell (the 'targets' / 'trainable_modules' fields), not per method.",
    ),
    "method without a name": (
        "axes:\n  method:\n    - {r: 4}\n",
        "grid.yaml, line 3: axes.method[0] is {'r': 4}; write a method name or a mapping with "
        "'name' and the method's parameters.",
    ),
    "zero batch size": (
        "defaults:\n  batch_size: 0\naxes: {method: [full]}\n",
        "grid.yaml, line 2: defaults.batch_size is 0; it must be an integer >= 1.",
    ),
    "boolean": (
        "defaults:\n  compile: maybe\naxes: {method: [full]}\n",
        "grid.yaml, line 2: defaults.compile is 'maybe'; allowed values are true, false.",
    ),
    "empty axis": (
        "axes:\n  batch_size: []\n",
        "grid.yaml, line 2: axes.batch_size is an empty list; give at least one value.",
    ),
    "empty hf path": (
        "axes:\n  model: ['hf:']\n",
        "grid.yaml, line 2: axes.model[0] is 'hf:', which names no path or hub id after 'hf:'.",
    ),
    "empty targets": (
        "axes:\n  targets: [[]]\n",
        "grid.yaml, line 2: axes.targets[0] is []; it must be a non-empty list "
        "of module names or patterns, or null for the model's default.",
    ),
    "sequence too long": (
        "axes:\n  model: [tiny-bert]\n  seq_len: [1024]\n",
        "grid.yaml, line 1: axes holds a cell where seq_len 1024 exceeds the 512 positions of model "
        "'tiny-bert'; lower seq_len or exclude the combination.",
    ),
    "head_lr without a head": (
        "axes:\n  model: [tiny-llama]\n  head_lr: [0.001]\n",
        "grid.yaml, line 1: axes holds a cell where head_lr is set but the cell trains no module in full "
        "(trainable_modules is empty); name the trainable_modules or drop head_lr.",
    ),
    "compile_scope without compile": (
        "axes:\n  compile_scope: [blocks]\n",
        "grid.yaml, line 1: axes holds a cell where compile_scope 'blocks' needs compile: true; set compile: true or "
        "drop compile_scope.",
    ),
    "bad head_lr": (
        "axes:\n  model: [tiny-bert]\n  head_lr: [-1]\n",
        "grid.yaml, line 3: axes.head_lr[0] is -1; it must be a positive number, or null.",
    ),
    "exclude field": ("axes: {method: [full]}\nexclude:\n  - {methods: full}\n", None),
    "exclude method": (
        "axes: {method: [full]}\nexclude:\n  - {method: qlora}\n",
        "grid.yaml, line 3: exclude[0].method is 'qlora'; write a method name (full, lora, randlora, "
        "peft-lora, peft-lora-liger, peft-randlora, peft-vera) or a mapping with 'name'.",
    ),
    "include not a list": (
        "include: {method: full}\n",
        "grid.yaml, line 1: include must be a list of mappings from field names to values.",
    ),
    "unknown injection": (
        "defaults: {inject: segfault}\naxes: {method: [full]}\n",
        "grid.yaml, line 1: defaults.inject is 'segfault'; allowed values are 'none', 'oom', 'error', 'nan', 'hang'.",
    ),
    "name not a string": (
        "name: [a]\naxes: {method: [full]}\n",
        "grid.yaml, line 1: name is ['a']; it must be a string.",
    ),
    "a list in defaults": (
        "defaults: {precision: [fp32, bf16]}\naxes: {method: [full]}\n",
        f"grid.yaml, line 1: defaults.precision is ['fp32', 'bf16']; allowed values are {PRECISIONS}.",
    ),
    "negative timeout": (
        "defaults: {timeout_s: -1}\naxes: {method: [full]}\n",
        "grid.yaml, line 1: defaults.timeout_s is -1; it must be a positive number.",
    ),
}


def error_of(text: str) -> str:
    with pytest.raises(BenchError) as info:
        matrix.parse(Source("grid.yaml", text), default_name="test")
    return str(info.value)


@pytest.mark.parametrize("case", [k for k, (_, m) in EXACT.items() if m])
def test_each_error_names_file_line_field_and_allowed_values(case):
    text, message = EXACT[case]
    assert error_of(text) == message


def test_an_unknown_field_lists_every_field():
    message = error_of("axes: {method: [full]}\nexclude:\n  - {methods: full}\n")
    assert message.startswith(
        "grid.yaml, line 3: exclude[0].methods is not a cell field; allowed fields are model, method,"
    )
    assert message.endswith("inject, timeout_s.")


def test_an_unknown_model_lists_the_presets_and_hf():
    message = error_of("axes:\n  model: [llama-7b]\n")
    assert message.startswith("grid.yaml, line 2: axes.model[0] is 'llama-7b'; allowed values are 'tiny-llama', ")
    assert message.endswith("or 'hf:<path or hub id>'.")


def test_a_bad_randlora_parameter_reports_the_library_s_own_message():
    message = error_of("axes:\n  method:\n    - {name: randlora, impl: fast}\n")
    assert message.startswith("grid.yaml, line 3: axes.method[0] is not a valid 'randlora' method: ")
    assert "'fast'" in message and "'eager', 'compiled', 'sparse'" in message


def test_an_unknown_embedded_grid_lists_the_embedded_ones():
    with pytest.raises(
        BenchError,
        match=r"--matrix 'nope' is neither a YAML file nor an embedded grid; embedded grids are ('[\w.-]+', )*'default'",
    ):
        matrix.load("nope")


def test_a_missing_file_is_named():
    with pytest.raises(BenchError, match=r"--matrix 'missing.yaml' is not a file."):
        matrix.load("missing.yaml")


def test_the_cli_prints_one_line_and_exits_2(write_grid, capsys):
    path = write_grid("axes:\n  precision: [fp8]\n")
    assert cli.main(["run", "--matrix", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}, line 2: axes.precision[0] is 'fp8'; allowed values are {PRECISIONS}.\n"


def test_a_real_process_shows_no_traceback(write_grid):
    path = write_grid("axes:\n  method: [qlora]\n")
    done = subprocess.run([sys.executable, "-m", "bench", "run", "--matrix", str(path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


def test_exclusive_modes_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--resume", "--force"])
    assert info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_grid_name_must_be_a_folder_name():
    assert error_of("name: ../elsewhere\naxes: {method: [full]}\n") == (
        "grid.yaml, line 1: name is '../elsewhere'; it names the run folder, so use letters, digits, '.', '_', '-' "
        "(not '.' or '..')."
    )


def test_exclude_rules_are_checked_even_without_axes():
    assert error_of("include: [{method: full}]\nexclude: [{precision: fp8}]\n") == (
        f"grid.yaml, line 2: exclude[0].precision is 'fp8'; allowed values are {PRECISIONS}."
    )


def test_a_window_over_several_ranks_is_refused_in_one_sentence():
    """FSDP2 shards W0, λ and γ; the window builds W0 + ΔW whole (it failed inside DTensor's mul before this check)."""
    from .conftest import one_cell

    window = {"name": "randlora", "r": 8, "accumulate": "window"}
    with pytest.raises(BenchError, match="accumulate 'window' runs on one GPU") as info:
        one_cell(method=window, gpus=2, micro_batches=2)
    assert "\n" not in str(info.value)
    assert one_cell(method=window, micro_batches=2).gpus == 1
    assert one_cell(method={"name": "randlora", "r": 8}, gpus=2).gpus == 2
