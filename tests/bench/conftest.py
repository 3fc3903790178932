"""Shared helpers of the harness tests: grids written to temporary files, cells built from field values."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bench.core.yamlfile import Source
from bench.spec import grid as matrix
from bench.spec.tasks.data import FASHION_MNIST_DIR

# Optional system data: Fashion-MNIST is a Debian package (the vision task's pretraining set). Tests that need it
# skip with this reason on a machine without it; `.ci/run` installs it, so CI runs them.
needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST is not in {FASHION_MNIST_DIR}: apt-get install dataset-fashion-mnist (Debian) runs this test",
)

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
def cells_in_this_process(monkeypatch):
    """`bench run` measures each cell in the test's process instead of a process of its own: the spec file in and
    the record out as bench.worker writes them (bench.worker.main), without a torch import per cell. For tests of
    what a run records; how cell processes start, end, time out and are killed is tests/bench/test_runner.py's."""
    from bench.parent.launchers import Outcome
    from bench.parent.launchers.local import LocalLauncher
    from bench.worker import main, protocol

    def execute(self, cell, spec_path, log_path, slot, work_dir):
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("measured in the test's process\n", encoding="utf-8")
        return Outcome(timed_out=False, returncode=main.main(["bench.worker", str(spec_path)]))

    monkeypatch.setattr(protocol, "exit_when_orphaned", lambda parent_pid: None)  # the parent is this process
    monkeypatch.setattr(LocalLauncher, "execute", execute)


@pytest.fixture(scope="session")
def two_rank_checks(tmp_path_factory):
    """device -> what the two-rank checks saved on it (parity.run_two_rank_checks): one torchrun per device for
    test_distributed.py and test_meta_build.py together."""
    from .parity import run_two_rank_checks

    done: dict[str, dict] = {}

    def results(device: str) -> dict:
        if device not in done:
            done[device] = run_two_rank_checks(tmp_path_factory.mktemp(f"two-ranks-{device}"), device)
        return done[device]

    return results


@pytest.fixture
def write_grid(tmp_path: Path):
    def write(text: str, name: str = "grid.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
