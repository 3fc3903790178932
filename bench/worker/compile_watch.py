"""Counts the times dynamo gives up compiling a function because it reached its recompile limit.

After such a hit, dynamo runs that code eagerly for the rest of the process without an error or a counter (its
`counters` say nothing), only a warning from `torch._dynamo.convert_frame`: "torch._dynamo hit config.recompile_limit
(8)". A compiled cell whose blocks recompiled that often during set-up or warm-up is then timed partly eager. This
handler counts those warnings while a cell runs, so its record can say so (`recompile_limit_hits`).
"""
from __future__ import annotations

import logging

LOGGER = "torch._dynamo.convert_frame"  # where dynamo logs the hit (torch 2.11 to 2.13)


class RecompileLimitWatch(logging.Handler):
    """A logging handler counting dynamo's recompile-limit warnings; use as a context manager."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.hits = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "torch._dynamo hit config." in message and "limit" in message:
            self.hits += 1

    def __enter__(self) -> RecompileLimitWatch:
        logging.getLogger(LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger(LOGGER).removeHandler(self)
