"""`python -m bench.worker <spec.json>`: one cell's process (bench/worker/main.py)."""

import sys

from bench.worker.main import main

sys.exit(main(sys.argv))
