"""How long to warm up: the grid's `warmup_steps`, then more while the step time has not settled.

On a CPU the first measured steps of a fixed warm-up still carried it (1.02, 0.88, 0.15, 0.04 s per step: the
allocator and oneDNN's kernel caches fill over several steps), so the median and the spread reported warm-up.
The harness takes exactly the configured warm-up steps (so a cell trains the same steps, and reaches the same loss,
whatever the clock did), then `settled_start` drops from the statistics the leading measured steps that were still
slower than the rest: they are counted as warm-up (`warmup_steps_run`, their times in `warmup_step_times_s`) and
left out of the median and the throughput. Accuracy cells keep every step. `SettleRule.another_step` is the rule for
a caller that may take extra steps (a benchmark of a function with no state).
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


def settled_start(times_s: list[float], rule: SettleRule = SETTLE) -> int:
    """How many leading measured steps are warm-up that leaked into the measurement: each leading step slower than
    (1 + rtol) × the median of the steps after it is dropped from the statistics, at most half of them. The cell
    itself is untouched (no extra step is taken, so a cell trains the same whatever the machine's clock did)."""
    start = 0
    while start < len(times_s) // 2 and times_s[start] > (1 + rule.rtol) * statistics.median(times_s[start + 1 :]):
        start += 1
    return start
