"""The formulas of a result row: throughput, percentiles, model FLOPs, MFU, the GPU peak table."""

from __future__ import annotations

import numpy as np
import pytest

from bench.worker import metrics


def test_throughput_is_total_units_over_total_time_not_the_mean_of_step_rates():
    times = [0.1, 0.1, 0.4]  # one slow step
    assert metrics.throughput(1000, times) == pytest.approx(3000 / 0.6)  # 5000 tokens/s
    mean_of_rates = sum(1000 / t for t in times) / len(times)  # 7500: what the formula must not be
    assert metrics.throughput(1000, times) != pytest.approx(mean_of_rates)


def test_throughput_of_equal_steps_is_units_over_one_step():
    assert metrics.throughput(4096, [0.5] * 8) == pytest.approx(8192)


@pytest.mark.parametrize("q", [0, 10, 50, 90, 100])
def test_percentiles_match_numpy_linear_interpolation(q):
    values = [0.31, 0.12, 0.5, 0.44, 0.29, 0.3, 0.9]
    assert metrics.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_step_stats_report_median_spread_and_total():
    stats = metrics.step_stats([3.0, 1.0, 2.0, 4.0])
    assert (stats.median_s, stats.total_s) == (2.5, 10.0)
    assert stats.p10_s == pytest.approx(1.3) and stats.p90_s == pytest.approx(3.7)


def test_model_flops_count_the_weight_gradient_only_when_the_base_trains():
    frozen = metrics.model_flops_per_step(100, 10, num_layers=0, hidden_size=0, seq_len=0, trains_base=False)
    full = metrics.model_flops_per_step(100, 10, num_layers=0, hidden_size=0, seq_len=0, trains_base=True)
    assert (frozen, full) == (4 * 100 * 10, 6 * 100 * 10)


def test_model_flops_add_attention_as_twelve_layer_hidden_seq_per_token():
    flops = metrics.model_flops_per_step(0, tokens=8, num_layers=2, hidden_size=64, seq_len=4, trains_base=True)
    assert flops == 12 * 2 * 64 * 4 * 8


def test_anchor_8b_step_needs_about_119_tflop():
    # ANCHORS.md: a frozen-base step of the 8B shape at 4 × 1024 tokens needs ~4·P·T ≈ 119 TFLOP.
    dense = metrics.model_flops_per_step(7.24e9, 4096, 0, 0, 0, trains_base=False)
    assert dense == pytest.approx(119e12, rel=0.01)


def test_mfu_is_achieved_flops_over_peak():
    assert metrics.mfu(1e12, [0.5, 0.5], peak=4e12) == pytest.approx(0.5)
    assert metrics.mfu(1e12, [0.5], peak=None) is None


@pytest.mark.parametrize(
    "name, key, peak",
    [
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA H100 80GB HBM3", "bf16", 989e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA L40S", "bf16", 362e12),
        ("NVIDIA L4", "fp32", 30.3e12),
        ("Tesla V100-SXM2-32GB", "bf16", None),
        ("Some Future GPU", "bf16", None),
        (None, "bf16", None),
    ],
)
def test_peak_table_matches_nvml_names(name, key, peak):
    assert metrics.peak_flops(name, key) == peak
