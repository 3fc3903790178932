"""bench.tools.kernel_table: device time per profiled step, by kernel family, from profile traces."""
from __future__ import annotations

import json

from bench.tools import kernel_table
from bench.worker.profiling import ACTIVE_STEPS


def _trace(folder, events):
    folder.mkdir(parents=True)
    (folder / "trace.json").write_text(json.dumps({"traceEvents": events}), encoding="utf-8")


def test_families_drop_templates_and_triton_numbers():
    assert kernel_table.family("void cutlass::Kernel2<cutlass_80_tensorop>(Params)") == "cutlass::Kernel2"
    assert kernel_table.family("triton_poi_fused_add_mul_3") == "triton_poi_fused_add_mul"


def test_the_table_sums_device_events_per_step_and_cell(tmp_path, capsys):
    run = tmp_path / "run"
    gemm = {"ph": "X", "cat": "kernel", "name": "nvjet_tst_128x256", "dur": 2000.0}
    _trace(run / "profiles" / "aaaaaaaaaaaa", [gemm, gemm, {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "dur": 9e6}])
    _trace(run / "profiles" / "bbbbbbbbbbbb", [gemm, {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "dur": 500.0}])
    assert kernel_table.main([str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    row = next(line for line in out if line.startswith("nvjet_tst_128x256")).split()
    assert [float(v) for v in row[1:]] == [4.0 / ACTIVE_STEPS, 2.0 / ACTIVE_STEPS]  # the CPU op is not counted
    total = next(line for line in out if line.startswith("total")).split()
    assert [float(v) for v in total[1:]] == [4.0 / ACTIVE_STEPS, 2.5 / ACTIVE_STEPS]


def test_a_run_without_profiles_says_what_to_do(tmp_path, capsys):
    assert kernel_table.main([str(tmp_path)]) == 2
    assert "bench run --profile" in capsys.readouterr().err
    assert kernel_table.main([str(tmp_path / "missing")]) == 2
    assert "no run folder at" in capsys.readouterr().err


def test_the_2_4_product_bench_says_why_it_cannot_run_without_a_gpu(capsys):
    import pytest
    import torch

    from bench.tools import semi_structured_bench

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the tool would time products")
    assert semi_structured_bench.main([]) == 2
    assert "CUDA GPU" in capsys.readouterr().err
