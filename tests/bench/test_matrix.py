"""Expansion of a grid into cells: product, defaults, exclude, include, de-duplication, stable hashes."""

from __future__ import annotations

import pytest

from bench.spec import grid as matrix
from bench.spec.cells import FIELDS, stable_hash

from .conftest import grid_from_text, one_cell


def labels(grid) -> list[str]:
    return [c.label() for c in grid.cells]


def test_axes_expand_to_their_product_in_grid_order():
    grid = grid_from_text("""
        axes:
          method: [full, lora]
          batch_size: [1, 2, 4]
    """)
    assert [(c.method.name, c.batch_size) for c in grid.cells] == [
        ("full", 1),
        ("full", 2),
        ("full", 4),
        ("lora", 1),
        ("lora", 2),
        ("lora", 4),
    ]


def test_defaults_fill_every_field_not_on_an_axis():
    grid = grid_from_text("""
        defaults: {precision: bf16, seq_len: 64, steps: 5}
        axes: {method: [lora]}
    """)
    (cell,) = grid.cells
    assert (cell.precision, cell.seq_len, cell.steps) == ("bf16", 64, 5)
    assert cell.warmup_steps == FIELDS["warmup_steps"].default
    assert cell.targets == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def test_method_parameters_are_resolved_with_the_library_defaults():
    cell = one_cell(method={"name": "randlora", "impl": "compiled"})
    params = cell.method.kwargs
    assert (params["impl"], params["r"], params["alpha"], params["basis"]) == ("compiled", 32, 640.0, "uniform")


def test_exclude_drops_cells_matching_every_key_of_a_rule():
    grid = grid_from_text("""
        axes:
          method: [full, lora, {name: randlora, impl: compiled}, {name: randlora, impl: eager}]
          precision: [fp32, bf16]
        exclude:
          - {method: full, precision: bf16}
          - {method: {name: randlora, impl: compiled}}
          - {method: lora, precision: [fp32, bf16]}
    """)
    assert labels(grid) == [
        "tiny-llama full fp32 b1x128",
        "tiny-llama randlora.eager r=32 fp32 b1x128",
        "tiny-llama randlora.eager r=32 bf16 b1x128",
    ]


def test_include_adds_its_own_product_over_the_defaults_and_ignores_exclude():
    grid = grid_from_text("""
        defaults: {seq_len: 32}
        axes: {method: [full]}
        exclude: [{method: lora}]
        include:
          - {method: lora, batch_size: [2, 4]}
    """)
    assert labels(grid) == [
        "tiny-llama full fp32 b1x32",
        "tiny-llama lora r=16 fp32 b2x32",
        "tiny-llama lora r=16 fp32 b4x32",
    ]


def test_a_grid_of_include_only_has_no_product_cell():
    grid = grid_from_text("include: [{method: full}]")
    assert labels(grid) == ["tiny-llama full fp32 b1x128"]


def test_identical_cells_are_listed_once():
    grid = grid_from_text("""
        axes: {method: [lora, {name: lora, r: 16, alpha: 32}]}
        include: [{method: lora}]
    """)
    assert len(grid.cells) == 1


def test_a_list_of_lists_gives_alternative_targets_and_a_flat_list_one_value():
    grid = grid_from_text("axes: {method: [lora], targets: [[q_proj], [q_proj, v_proj]]}")
    assert [c.targets for c in grid.cells] == [("q_proj",), ("q_proj", "v_proj")]
    (cell,) = grid_from_text("axes: {method: [lora], targets: [q_proj, v_proj]}").cells
    assert cell.targets == ("q_proj", "v_proj")


def test_full_finetuning_has_no_targets_so_target_variants_collapse():
    grid = grid_from_text("axes: {method: [full], targets: [[q_proj], [v_proj]]}")
    assert [c.targets for c in grid.cells] == [()]


def test_image_models_take_their_sequence_length_from_the_preset():
    (cell,) = grid_from_text("axes: {model: [tiny-vit], seq_len: [128, 512]}").cells
    assert cell.seq_len == (32 // 8) ** 2 + 1


def test_trust_remote_code_only_sticks_to_hf_models():
    assert one_cell(trust_remote_code=True).trust_remote_code is False
    assert one_cell(model="hf:/some/folder", trust_remote_code=True).trust_remote_code is True


def test_the_hash_ignores_the_timeout_and_integral_float_spelling():
    base = one_cell(method={"name": "randlora", "alpha": 640})
    assert one_cell(method={"name": "randlora", "alpha": 640.0}).hash == base.hash
    assert one_cell(method={"name": "randlora", "alpha": 640}, timeout_s=5).hash == base.hash


@pytest.mark.parametrize(
    "change",
    [
        {"model": "tiny-bert"},
        {"method": "lora"},
        {"method": {"name": "randlora", "impl": "sparse"}},
        {"precision": "bf16"},
        {"batch_size": 3},
        {"seq_len": 17},
        {"warmup_steps": 2},
        {"steps": 3},
        {"seed": 1},
        {"compile": True},
        {"targets": ["q_proj"]},
        {"lr": 0.5},
        {"device": "cpu"},
        {"inject": "nan"},
    ],
)
def test_every_measured_field_changes_the_hash(change):
    assert one_cell(**{"method": "randlora", **change}).hash != one_cell(method="randlora").hash


def test_the_hash_is_stable_across_processes_and_versions_of_this_file():
    # A literal: if this changes, every existing run folder's cells would be run again on --resume.
    assert (
        stable_hash({"b": [1, 2.0], "a": "x"}) == stable_hash({"a": "x", "b": [1, 2]}) == "721ef82f2d6c"
    )  # sha256 of {"a":"x","b":[1,2]}


def test_cells_survive_a_round_trip_through_their_dict():
    cell = one_cell(method={"name": "randlora", "impl": "sparse", "basis": "sparse"}, targets=["q_proj"])
    assert type(cell).from_dict(cell.to_dict()) == cell


def test_the_group_ignores_batch_size_only():
    assert one_cell(batch_size=1).group == one_cell(batch_size=8).group
    assert one_cell(batch_size=1).group != one_cell(batch_size=1, seed=3).group


@pytest.mark.parametrize("name", matrix.embedded_grids())
def test_every_embedded_grid_loads_by_bare_name(name):
    grid = matrix.load(name)
    assert grid.cells and grid.source == f"bench/grids/{name}.yaml"


def test_the_default_grid_exercises_every_method_impl_and_precision():
    grid = matrix.load("default")
    from bench.spec.methods import METHODS
    from bench.spec.precision import PRECISIONS

    assert {c.method.name for c in grid.cells} == set(METHODS)
    assert {c.method.kwargs["impl"] for c in grid.cells if c.method.name == "randlora"} == {
        "eager",
        "compiled",
        "sparse",
        "semi_structured",
    }
    assert {c.micro_batches for c in grid.cells} == {1, 2}
    assert {c.precision for c in grid.cells} == set(PRECISIONS)
    assert all(c.model.startswith("tiny-") for c in grid.cells)


def test_the_anchor_grid_reproduces_anchors_md():
    cells = matrix.load("h200-anchors").cells
    eight_b = [c for c in cells if c.model == "llama-8b" and c.batch_size == 4 and c.method.name == "peft-lora"]
    (cell,) = eight_b
    assert (cell.precision, cell.seq_len, cell.warmup_steps, cell.steps) == ("bf16", 1024, 3, 8)
    assert cell.method.kwargs == {"r": 16, "alpha": 32, "dropout": 0.0}
    assert len(cell.targets) == 7


def test_a_path_loads_a_file(write_grid):
    path = write_grid("name: mine\naxes: {method: [full]}\n")
    grid = matrix.load(str(path))
    assert (grid.name, grid.source, len(grid.cells)) == ("mine", str(path), 1)


def test_every_committed_study_keeps_its_cell_hashes():
    """Fields and method parameters added later stay out of the hash at their default: a committed run folder
    still resumes, and its records still name their cells."""
    from pathlib import Path

    from bench.records.folder import RunFolder
    from bench.spec.cells import Cell

    reports = Path(__file__).resolve().parents[2] / "reports"
    records = [r for a in reports.rglob("records.jsonl.gz") for r in RunFolder(a.parent).records().values()]
    assert len(records) > 400
    assert all(Cell.from_dict(r.cell).hash == r.cell_hash for r in records)
    done = RunFolder(reports / "default-cpu").records()
    assert set(done) <= {c.hash for c in matrix.load("default").cells}  # later methods (peft-vera) add cells only
