"""The benchmark harness: a YAML grid of cells, each trained for a few steps in its own process.

    python -m bench run --matrix default      # the embedded CPU grid, a few minutes
    python -m bench run --matrix bench/grids/h200-anchors.yaml
    python -m bench report | check | accuracy | env | list

Layers, each importing only those below it (ARCHITECTURE.md has the picture and the path of one cell):
    cli                 the command line
    views, tools        readers of records (report, check, accuracy summary); single-purpose scripts
    parent              the runner and its launchers: which cells run where, and every outcome recorded
    worker              what runs inside a cell's process: measure, timing, memory, metrics, profiling, ranks
    records             the typed record of a cell, the run folder, the results table
    spec                a grid file -> cells, and the registries of presets, methods, precisions and tasks
    core                errors, files, YAML, NVML, the machine's description
"""
