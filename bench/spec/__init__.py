"""The grid spec: a grid file -> its cells (grid, cells), and the registries a cell names (presets, methods,
precision, tasks, the Slurm section). What a cell is, never how it runs or what it measured."""
