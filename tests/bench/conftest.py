"""Shared helpers of the harness tests: grids written to temporary files, cells built from field values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench import matrix
from bench.yamlfile import Source

# Small enough that one cell is dominated by its process start (imports), not by its steps.
TINY = {"model": "tiny-llama", "batch_size": 2, "seq_len": 16, "warmup_steps": 1, "steps": 2, "timeout_s": 120}


def grid_from_text(text: str, name: str = "grid.yaml") -> matrix.Grid:
    return matrix.parse(Source(name, textwrap.dedent(text)), default_name="test")


def one_cell(**fields):
    """The single cell of a grid whose defaults are TINY overridden by `fields`."""
    import yaml

    defaults = {**TINY, **fields}
    grid = grid_from_text(yaml.safe_dump({"defaults": defaults, "include": [{}]}))
    (cell,) = grid.cells
    return cell


@pytest.fixture(scope="module")
def one_thread():
    """Many small ops: on a shared two-core machine torch's second thread costs more than it gives (4x here)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def write_grid(tmp_path: Path):
    def write(text: str, name: str = "grid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
