"""`python -m bench`: the command line (see `bench.cli`)."""

import sys

from .cli import main

sys.exit(main())
