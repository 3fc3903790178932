"""torch.profiler traces of a cell, taken after its measured steps so they never slow what is measured.

Two files per profiled cell, under <run>/profiles/<cell hash>/:
    tensorboard/cell.<time>.pt.trace.json   written by torch's tensorboard_trace_handler, read by TensorBoard's
                                            profiler plugin: pip install torch-tb-profiler (the `profiler` extra),
                                            then tensorboard --logdir <run>/profiles/<cell hash>
    trace.json                              the same Chrome trace under a fixed name, for chrome://tracing or
                                            https://ui.perfetto.dev
(A profile's trace can be exported only once — a second export_chrome_trace raises "Trace is already saved" —
hence the copy instead of a second export.)
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

WARMUP_STEPS, ACTIVE_STEPS = 1, 2


def trace(run_step: Callable[[int], object], device: torch.device, out_dir: str) -> None:
    """Profile WARMUP_STEPS + ACTIVE_STEPS calls of `run_step(i)` and write both trace files into `out_dir`."""
    folder = Path(out_dir)
    shutil.rmtree(folder, ignore_errors=True)  # a trace of an earlier run of this cell would be ambiguous
    tensorboard_dir = folder / "tensorboard"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(
        activities=activities,
        schedule=schedule(wait=0, warmup=WARMUP_STEPS, active=ACTIVE_STEPS, repeat=1),
        on_trace_ready=tensorboard_trace_handler(str(tensorboard_dir), worker_name="cell"),
        record_shapes=True,
        profile_memory=True,
    ) as prof:
        for i in range(WARMUP_STEPS + ACTIVE_STEPS):
            run_step(i)
            prof.step()
    (written,) = tensorboard_dir.glob("cell.*.pt.trace.json")
    shutil.copyfile(written, folder / "trace.json")
