"""The parent: the runner (which cells to run, their records and statuses), the launchers (where a cell's
process runs: this machine's GPUs, or Slurm) and the live progress of a run."""
