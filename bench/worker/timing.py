"""Step timing on the device: CUDA events on a GPU, `time.perf_counter` on the CPU (where work is synchronous).

Each step is bracketed by its own start and end marks; a step's time is what the device spent between them, so
host work between steps (bookkeeping, the loop) is not counted. Events are read once, after the last step, so
timing never forces a synchronisation in the middle of the measurement.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class StepTimer:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self._marks: list[tuple] = []

    @contextmanager
    def step(self):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._marks.append((start, end))
        else:
            start = time.perf_counter()
            yield
            self._marks.append((start, time.perf_counter()))

    def times_s(self) -> list[float]:
        """Seconds of every step so far (synchronises a GPU once)."""
        if self.cuda:
            torch.cuda.synchronize()
            return [start.elapsed_time(end) / 1000.0 for start, end in self._marks]
        return [end - start for start, end in self._marks]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def wall_clock(device: torch.device, into: dict, key: str):
    """Host wall-clock seconds of the block, the device drained at both ends (for the first step: compilation,
    autotuning and allocator growth happen on the host and would be missed by device events)."""
    synchronize(device)
    start = time.perf_counter()
    yield
    synchronize(device)
    into[key] = time.perf_counter() - start


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """Achieved FLOP/s of a (size × size) @ (size × size) product in `dtype`: a measured ceiling for MFU."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    timer = StepTimer(device)
    for _ in range(repeats):
        with timer.step():
            a @ b
    return 2 * size**3 * repeats / sum(timer.times_s())
