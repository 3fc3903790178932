"""Test helper: measure every cell of a grid in this one process and write a run folder `bench check` can read.

    python -m tests.bench.gate_runs GRID RUN_DIR [--heavier METHOD]

One process for all cells (torch is imported once) keeps ten repeated runs of the CI grid affordable in a test;
the measure itself is `bench.worker.measure.run`, as in the cell processes `bench run` starts. `--heavier METHOD` makes
METHOD deliberately heavier, in this process only: every frozen Linear keeps one extra weight-sized tensor for
backward. Nothing here is reachable from `bench run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.worker import measure as cell
from bench.core import envinfo
from bench.spec import grid as matrix
from bench.spec import methods
from bench.records import table as results


def _keep_weight_copy(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    # 0 · (x · copy(W)ᵀ) changes no value, but autograd saves the copy (weight-sized) to compute dL/dx.
    return output + 0 * F.linear(inputs[0], module.weight.detach().clone())


def heavier(adapt):
    """`adapt`, then a forward hook on every frozen Linear that keeps a weight-sized copy alive for backward."""

    def adapt_heavier(model, params, targets, trainable):
        model = adapt(model, params, targets, trainable)
        for module in model.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                module.register_forward_hook(_keep_weight_copy)
        return model

    return adapt_heavier


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gate_runs")
    parser.add_argument("grid")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--heavier", metavar="METHOD")
    args = parser.parse_args(argv)
    if args.heavier:
        method = methods.METHODS[args.heavier]
        methods.METHODS[args.heavier] = dataclasses.replace(method, adapt=heavier(method.adapt))
    grid = matrix.load(args.grid)
    folder = RunFolder(args.run_dir)
    env = {k: v for k, v in envinfo.capture().items() if k != "gpus"}
    for one in grid.cells:
        record = Record.new(one, {**env, "gpu": None}, {"run_name": folder.root.name})
        record.complete(cell.run(one, cell.Options()))
        write_json(folder.result_path(one.hash), record)
        print(f"{record.status:<8} {one.label()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
