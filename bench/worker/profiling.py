"""torch.profiler traces of a cell, taken after its measured steps so they never slow what is measured.

Two files per profiled cell, under <run>/profiles/<cell hash>/:
    tensorboard/cell.<time>.pt.trace.json   written by torch's tensorboard_trace_handler, read by TensorBoard's
                                            profiler plugin: pip install torch-tb-profiler (the `profiler` extra),
                                            then tensorboard --logdir <run>/profiles/<cell hash>
    trace.json                              the same Chrome trace under a fixed name, for chrome://tracing or
                                            https://ui.perfetto.dev
    summary.txt                             the operators by their own time on the device (on the CPU without
                                            a GPU), and on a GPU the device's busy share of the measured step:
                                            kernel time per step / the median step measured without the profiler
                                            (near 100 %: the GPU is the bound; far below: the host or gaps are)
(A profile's trace can be exported only once — a second export_chrome_trace raises "Trace is already saved" —
hence the copy instead of a second export.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

WARMUP_STEPS, ACTIVE_STEPS = 1, 2
SUMMARY_ROWS = 40
DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # trace categories of work on the device


def trace(run_step: Callable[[int], object], device: torch.device, out_dir: str, step_s: float | None = None) -> None:
    """Profile WARMUP_STEPS + ACTIVE_STEPS calls of `run_step(i)` and write the trace files and summary.txt into
    `out_dir`; `step_s` is the cell's median step measured without the profiler."""
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
    text = summary(prof.key_averages(), device, step_s, folder / "trace.json")
    (folder / "summary.txt").write_text(text, encoding="utf-8")


def summary(averages, device: torch.device, step_s: float | None, trace_path: Path, rows: int = SUMMARY_ROWS) -> str:
    """The operator table of the active steps, headed on a GPU by the device's busy share of a measured step."""
    on_gpu = device.type == "cuda"
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    lines = [f"{ACTIVE_STEPS} profiled steps after {WARMUP_STEPS} warm-up; operators by {key}"]
    if on_gpu:
        lines += busy_lines(trace_path, step_s)
    return "\n".join(lines) + "\n\n" + averages.table(sort_by=key, row_limit=rows) + "\n"


def device_busy_ms(trace_path: Path) -> float:
    """Milliseconds per profiled step in which the device ran a kernel, copy or memset: the union of those
    intervals of the Chrome trace (overlapping kernels count once; annotations such as ProfilerStep do not count)."""
    events = json.loads(Path(trace_path).read_text(encoding="utf-8"))["traceEvents"]
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"]) for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_WORK
    )
    busy_us, start, end = 0.0, None, None
    for a, b in spans:
        if end is None or a > end:
            busy_us += 0.0 if end is None else end - start
            start, end = a, b
        else:
            end = max(end, b)
    busy_us += 0.0 if end is None else end - start
    return busy_us / 1e3 / ACTIVE_STEPS


def busy_lines(trace_path: Path, step_s: float | None) -> list[str]:
    busy_ms = device_busy_ms(trace_path)
    lines = [f"device busy per profiled step: {busy_ms:.1f} ms (kernels, copies, memsets; union over time)"]
    if step_s:
        lines.append(
            f"median step without the profiler: {step_s * 1e3:.1f} ms -> device busy ~{busy_ms / (step_s * 1e3):.0%} "
            "(the profiler lengthens kernels a little: ~100 % means bound by the GPU)"
        )
    return lines
