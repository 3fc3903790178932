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
