"""Hostile or broken input to `bench run`: every refusal is one sentence on stderr, exit 2, nothing written."""

from __future__ import annotations

import pytest

from bench import cli

GRID = "defaults: {model: tiny-llama, steps: 1, warmup_steps: 1, batch_size: 1, seq_len: 8}\ninclude: [{}]\n"


def refused(capsys, monkeypatch, tmp_path, *argv: str) -> str:
    """Run the CLI in `tmp_path`; assert exit 2, one `error:` line and no run folder; return that line."""
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert set(tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "x").exists()
    return err[0]


@pytest.mark.parametrize("name", ["..", ".", "../../x", "a/b", "/tmp/x", "a b", ""])
def test_a_run_name_that_is_not_one_safe_path_component_is_refused(capsys, monkeypatch, tmp_path, name):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID)
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--name", name)
    assert "--name" in line


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b"])
def test_a_grid_name_that_is_not_one_safe_path_component_is_refused(capsys, monkeypatch, tmp_path, name):
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"name: {name!r}\n" + GRID)
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid))
    assert "name" in line and str(grid) in line


def test_a_grid_file_whose_stem_is_not_a_run_name_needs_a_name(capsys, monkeypatch, tmp_path):
    grid = tmp_path / "..yaml"  # its stem is '.'
    grid.write_text(GRID)
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid))
    assert "--name" in line


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """`levels` anchors, each a list of `width` aliases to the one before: width**levels values in ~400 bytes."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\naxes: {{model: *a{levels - 1}}}\n"


def test_an_alias_bomb_is_refused_at_once_naming_the_file(capsys, monkeypatch, tmp_path):
    import time

    grid = tmp_path / "bomb.yaml"
    grid.write_text(alias_bomb())
    assert len(grid.read_bytes()) < 1024
    started = time.perf_counter()
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--dry-run")
    assert time.perf_counter() - started < 2.0
    assert str(grid) in line and "aliases" in line


def test_an_alias_to_its_own_collection_is_refused(capsys, monkeypatch, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text("axes: &a {model: [*a]}\n")
    assert "alias" in refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--dry-run")


def test_a_grid_that_is_not_utf8_is_one_sentence_naming_it(capsys, monkeypatch, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_bytes(b"name: caf\xe9\n" + GRID.encode())
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--dry-run")
    assert str(grid) in line and "UTF-8" in line


@pytest.mark.parametrize("style", ["flow", "block"])
def test_nesting_500_deep_is_one_sentence_naming_the_file(capsys, monkeypatch, tmp_path, style):
    grid = tmp_path / "grid.yaml"
    deep = "[" * 500 + "]" * 500 if style == "flow" else "\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(500))
    grid.write_text(f"axes: {{seed: 0}}\ndescription: {deep}\n" if style == "flow" else f"description:{deep}")
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--dry-run")
    assert str(grid) in line and "deeper" in line


def test_scientific_notation_without_a_dot_is_a_number(tmp_path):
    from bench.core.yamlfile import Source

    data = Source("g.yaml", "lr: 1e-4\ntimeout_s: 1.0e308\nn: -2E3\nword: 1e\n").data
    assert data == {"lr": 1e-4, "timeout_s": 1e308, "n": -2000.0, "word": "1e"}
    from tests.bench.conftest import one_cell

    assert one_cell(lr=1e-4).lr == 1e-4
    grid = tmp_path / "grid.yaml"
    grid.write_text("defaults: {lr: 1e-4, timeout_s: 1.0e308}\ninclude: [{}]\n")
    from bench.spec import grid as grids

    (cell,) = grids.load(str(grid)).cells
    assert (cell.lr, cell.timeout_s) == (1e-4, 1e308)


@pytest.mark.parametrize(
    "field, value, allowed", [("seed", 2**70, "0 to 4294967295"), ("seed", -1, "0 to 4294967295"), ("gpus", 1_000_000, "1 to 64")]
)
def test_an_integer_out_of_its_range_is_refused_where_the_grid_is_read(
    capsys, monkeypatch, tmp_path, field, value, allowed
):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID + f"axes: {{{field}: [0, {value}]}}\n".replace("[0, ", "[1, "))
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--dry-run")
    assert f"{str(grid)}, line 3: axes.{field}[1] is {value}" in line and allowed in line


def test_duplicate_cells_are_merged_with_a_note(capsys, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID + "axes: {lr: [0.001, 1.0e-3, 1e-3]}\n")
    assert cli.main(["run", "--matrix", str(grid), "--run-dir", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "note: 2 duplicate cells merged" in out and "2 cells from" in out  # {} and lr 0.001, written three ways


def test_a_bad_regular_expression_in_targets_is_refused_where_the_grid_is_read(capsys, monkeypatch, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(GRID + "axes: {targets: [['q_proj', 'layers.(']]}\n")
    line = refused(capsys, monkeypatch, tmp_path, "run", "--matrix", str(grid), "--dry-run")
    assert "'layers.('" in line and "regular expression" in line and "line 3" in line
