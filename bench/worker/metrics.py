"""Formulas that turn step times into the numbers of a result row. Plain Python: no torch, no device.

Throughput is total work over total measured time, never the mean of per-step rates (which overweights fast
steps): tokens_per_s = Σ tokens / Σ step_time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Dense (no sparsity) tensor-core peaks in FLOP/s from NVIDIA's datasheets, per precision column.
# Matched against the NVML name in order, so the more specific names come first.
GPU_PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12}),  # SXM; the NVL has less
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12}),
    ("H100 NVL", {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12}),  # SXM
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12}),
    ("L40", {"bf16": 181e12, "fp16": 181e12, "tf32": 90.5e12, "fp32": 90.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12}),  # also matches A10G: approximate
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),  # no bf16 / tf32 tensor cores
)


def peak_flops(gpu_name: str | None, peak_key: str) -> float | None:
    """The datasheet peak of `gpu_name` for a precision column ('bf16', 'fp16', 'tf32', 'fp32'); None if unknown."""
    if not gpu_name:
        return None
    for pattern, peaks in GPU_PEAK_FLOPS:
        if pattern in gpu_name:
            return peaks.get(peak_key)
    return None


@dataclass(frozen=True)
class StepStats:
    median_s: float
    p10_s: float
    p90_s: float
    total_s: float


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def step_stats(step_times_s: list[float]) -> StepStats:
    return StepStats(
        median_s=percentile(step_times_s, 50),
        p10_s=percentile(step_times_s, 10),
        p90_s=percentile(step_times_s, 90),
        total_s=sum(step_times_s),
    )


def throughput(units_per_step: int, step_times_s: list[float]) -> float:
    """Units (tokens or samples) per second over the measured steps: units_per_step · n / Σ step_time."""
    return units_per_step * len(step_times_s) / sum(step_times_s)


def model_flops_per_step(
    matmul_params: int, tokens: int, num_layers: int, hidden_size: int, seq_len: int, trains_base: bool
) -> float:
    """FLOPs one training step needs at the least, with the convention of PaLM (Chowdhery et al., App. B).

    Dense part: the forward (2·P·T) plus the input-gradient backward (2·P·T) for every method, plus the
    weight-gradient backward (2·P·T) only when the base weights train (full fine-tuning): 6·P·T or 4·P·T.
    Attention scores and values: 12·L·h·S per token for forward and backward (not halved for causal masks).
    P counts the parameters of the base model's matmuls (embedding lookups are not matmuls); adapter FLOPs are
    not counted, so a slower adapter shows as a lower MFU.
    """
    dense = (6 if trains_base else 4) * matmul_params * tokens
    attention = 12 * num_layers * hidden_size * seq_len * tokens
    return float(dense + attention)


def mfu(flops_per_step: float, step_times_s: list[float], peak: float | None) -> float | None:
    """Model FLOPs utilisation: flops_per_step · n / Σ step_time over the peak FLOP/s; None if the peak is unknown."""
    if not peak:
        return None
    return flops_per_step * len(step_times_s) / sum(step_times_s) / peak
