"""The profile summary's busy share: kernels, copies and memsets counted once over time, annotations not at all."""
from __future__ import annotations

import json

import pytest

from bench.worker import profiling as profile


def _event(cat: str, ts: float, dur: float, name: str = "k") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_device_busy_is_the_union_of_device_work_per_profiled_step(tmp_path):
    events = [
        _event("gpu_user_annotation", 0, 1000, "ProfilerStep#1"),  # spans everything; not work
        _event("cpu_op", 0, 900, "aten::mm"),
        _event("kernel", 100, 200),  # 100-300
        _event("kernel", 250, 100),  # overlaps: 250-350 -> union 100-350
        _event("gpu_memcpy", 400, 50),  # 400-450
        _event("gpu_memset", 600, 25),  # 600-625
        {"ph": "i", "cat": "kernel", "ts": 700},  # an instant event has no duration
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    busy_ms = (250 + 50 + 25) / 1e3 / profile.ACTIVE_STEPS
    assert profile.device_busy_ms(path) == pytest.approx(busy_ms)
    first, second = profile.busy_lines(path, step_s=busy_ms / 1e3 * 2)
    assert first.startswith(f"device busy per profiled step: {busy_ms:.1f} ms")
    assert "device busy ~50%" in second


def test_a_trace_without_device_work_is_idle(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": [_event("cpu_op", 0, 10)]}))
    assert profile.device_busy_ms(path) == 0.0
