"""The one error a user of the harness should see: bad input, said in one sentence, exit code 2."""

from __future__ import annotations


class BenchError(Exception):
    """Bad input (a grid, a flag, a run folder); `str()` is one sentence naming what was wrong and what is allowed."""

    exit_code = 2
