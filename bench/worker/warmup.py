"""How long to warm up: the grid's `warmup_steps`, then more while the step time has not settled.

On a CPU the first measured steps of a fixed warm-up still carried it (1.02, 0.88, 0.15, 0.04 s per step: the
allocator and oneDNN's kernel caches fill over several steps), so the median and the spread reported warm-up.
After the configured steps, warm-up goes on until the last `window` step times lie within `rtol` of their median,
capped at `max_extra_steps` more steps and `max_extra_s` more seconds, so a step time that never settles (a busy
machine) costs a bounded wait. How many steps were taken is recorded (`warmup_steps_run`).

A cell that scores a task after training (task.evaluate) keeps its exact step count: its accuracy must not
depend on how noisy the machine's clock was.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass(frozen=True)
class SettleRule:
    window: int = 3  # the last steps compared; 3 tells a trend from one odd step
    rtol: float = 0.15  # (max - min) of the window over its median; CPU steps on a shared machine jitter ~5-10%
    max_extra_steps: int = 20  # beyond the grid's warmup_steps
    max_extra_s: float = 30.0  # beyond the grid's warmup_steps: bounds the wait of a slow cell

    def settled(self, times_s: list[float]) -> bool:
        """Whether the last `window` step times agree within `rtol` of their median."""
        if len(times_s) < self.window:
            return False
        last = times_s[-self.window :]
        return max(last) - min(last) <= self.rtol * statistics.median(last)

    def another_step(self, times_s: list[float], configured: int) -> bool:
        """Whether to take one more warm-up step after those timed in `times_s` (the first step included), with
        `configured` the grid's warmup_steps."""
        if len(times_s) < configured:
            return True
        extra = times_s[configured:]
        if len(extra) >= self.max_extra_steps or sum(extra) >= self.max_extra_s:
            return False
        return not self.settled(times_s)


FIXED = SettleRule(max_extra_steps=0)  # exactly the grid's warmup_steps
SETTLE = SettleRule()
