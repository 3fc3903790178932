"""The benchmark harness: a YAML matrix of cells, each trained for a few steps in its own process.

    python -m bench run --matrix default      # the embedded CPU grid, a few minutes
    python -m bench run --matrix bench/grids/h200-anchors.yaml
    python -m bench env | list

Three concerns, kept apart (bench/README.md has the details):
    what a cell is          matrix (grid file -> cells), cells (fields, checks, hash), and the registries
                            presets, methods, precision, tasks
    how a cell is run       runner (the parent: slots, timeouts, statuses), _child (the cell's process), nvml
    what a cell measures    cell (the steps), timing, memory, metrics, profile, envinfo
Results: results (one JSON per cell, the parquet / CSV table); progress and cli face the user.

(bench.layer_bench and bench.ceilings are separate single-process scripts for one layer and the GPU's ceilings.)
"""
