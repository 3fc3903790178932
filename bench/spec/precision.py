"""The five precisions a cell can train in, one entry each.

    fp32      float32 weights and math, TF32 off
    tf32      float32 weights, matmuls on TF32 tensor cores (torch.set_float32_matmul_precision("high"))
    bf16      pure bfloat16: weights, gradients and optimizer state in bf16, no autocast
    fp16-amp  float32 master weights, float16 autocast, loss scaled by a GradScaler
    bf16-amp  float32 master weights, bfloat16 autocast (no scaler: bf16 has float32's range)

The adapter libraries keep their own parameter dtypes on top (peft's adapters stay float32 under `bf16`;
`randlora` stores λ, γ in float32 unless its `param_dtype` is "model").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    name: str
    description: str
    param_dtype: torch.dtype  # the dtype the model's weights are built in
    autocast_dtype: torch.dtype | None  # None: no autocast
    tf32: bool
    grad_scaler: bool
    peak_key: str  # which column of the GPU peak-FLOP/s table bounds this precision's matmuls

    def configure_backends(self) -> None:
        """Set the process-wide TF32 switches; each cell runs in its own process, so nothing leaks."""
        torch.set_float32_matmul_precision("high" if self.tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = self.tf32

    def autocast(self, device_type: str):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device_type, dtype=self.autocast_dtype)

    def make_scaler(self, device_type: str) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(device_type) if self.grad_scaler else None


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", "float32 weights and math, TF32 off", torch.float32, None, False, False, "fp32"),
        Precision("tf32", "float32 weights, TF32 matmuls", torch.float32, None, True, False, "tf32"),
        Precision(
            "bf16", "pure bfloat16 (weights, grads, optimizer state)", torch.bfloat16, None, False, False, "bf16"
        ),
        Precision(
            "fp16-amp",
            "float16 autocast, float32 master weights, GradScaler",
            torch.float32,
            torch.float16,
            False,
            True,
            "fp16",
        ),
        Precision(
            "bf16-amp", "bfloat16 autocast, float32 master weights", torch.float32, torch.bfloat16, False, False, "bf16"
        ),
    )
}
