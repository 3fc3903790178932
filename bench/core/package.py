"""Where this package lives: a cell's process (and a Slurm job on its node) gets it on PYTHONPATH from here."""

from pathlib import Path

PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])  # the folder that holds bench/ and randlora/
