"""The benchmark harness: a YAML matrix of cells, each trained for a few steps in its own process.

    python -m bench run --matrix default      # the embedded CPU grid, a few minutes
    python -m bench run --matrix bench/grids/h200-anchors.yaml
    python -m bench env | list

Three concerns, kept apart: what a cell is (`matrix`, `cells`), how a cell is isolated and scheduled (`runner`,
`_child`), and what a cell measures (`cell`, `timing`, `memory`, `metrics`). Results land in one JSON per cell
and a parquet table (`results`).
"""
