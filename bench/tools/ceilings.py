"""Measured ceilings of this GPU: a bf16 matrix product and a device-to-device copy (METHOD: use these, not datasheets).

    python -m bench.tools.ceilings            # prints JSON: matmul_bf16_flops, copy_bytes_per_s
"""
from __future__ import annotations

import json

import torch


def measure(n: int = 8192, copy_bytes: int = 2**32, repeats: int = 10) -> dict:
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    src = torch.randn(copy_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    out = {}
    for name, fn, work in (
        ("matmul_bf16_flops", lambda: a @ b, 2 * n**3),
        ("copy_bytes_per_s", lambda: dst.copy_(src), 2 * copy_bytes),  # bytes read + bytes written
    ):
        for _ in range(3):
            fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        out[name] = work * repeats / (start.elapsed_time(end) / 1e3)
    out["gpu"] = torch.cuda.get_device_name()
    return out


if __name__ == "__main__":
    print(json.dumps(measure()))
