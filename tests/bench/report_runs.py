"""Test helper: run folders with made-up results for the report — two GPU types on two machines, every status,
accuracy columns over two learning rates, and hostile strings in a model name, a reason and a traceback."""

from __future__ import annotations

from pathlib import Path

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench.records import table as results

from .conftest import one_cell

# A model name a grid may legally carry (`hf:` + anything) and that would run script if it reached the page raw.
HOSTILE_MODEL = 'hf:<img src=x onerror="window.__xss=1">'
HOSTILE_REASON = "RuntimeError: </td><script>window.__xss=2</script>"
HOSTILE_TRACEBACK = 'Traceback (most recent call last):\n  File "x.py"\n</pre><script>window.__xss=3</script>'
METHODS = {
    "full": "full",
    "lora": {"name": "lora", "r": 16, "alpha": 32},
    "randlora": {"name": "randlora", "impl": "eager", "r": 32, "alpha": 640},
}
SIZES = {"tiny-llama": 230_000, "llama-1.1b": 1_100_000_000}
GPUS = {
    "h200": ("gpu-box-1", {"gpu_name": "NVIDIA H200", "gpu_uuid": "GPU-h200", "gpu_memory_bytes": 150_000_000_000}),
    "a100": (
        "gpu-box-2",
        {"gpu_name": "NVIDIA A100-SXM4-80GB", "gpu_uuid": "GPU-a100", "gpu_memory_bytes": 85_000_000_000},
    ),
}


def env_of(machine: str, gpu: dict) -> dict:
    return {"hostname": machine, "cpu_name": "Test CPU", "torch_version": "2.13.0", "git_commit": "abc123",
            "git_dirty": False, "gpu": gpu}  # fmt: skip


def cell_record(machine: str, gpu: dict, status: str = "ok", tokens_per_s: float = 1000.0,
                peak: int = 2**30, accuracy: float | None = None, **fields) -> dict:  # fmt: skip
    cell = one_cell(seq_len=64, **fields)
    record = Record.new(cell, env_of(machine, gpu), {"run_name": machine, "started_at": "2026-11-28T10:00:00"})
    record.status = status
    record.device = {"device": "cuda", "device_name": gpu["gpu_name"], "torch_cuda_version": "12.8"}
    if status != "ok":
        record.reason = HOSTILE_REASON if status == "error" else f"{status}: made up for the test"
        record.traceback = HOSTILE_TRACEBACK if status == "error" else None
        return record
    size = SIZES.get(cell.model, 7_000_000)
    trainable = size if cell.method.name == "full" else size // 100 * (2 if cell.method.name == "randlora" else 1)
    step_s = cell.batch_size * cell.seq_len / tokens_per_s
    record.train = {
        "trainable_params": trainable,
        "total_params": size,
        "tokens_per_s": tokens_per_s,
        "step_times_s": [step_s * f for f in (0.98, 1.0, 1.01, 1.03)],
        "step_time_median_s": step_s,
    }
    record.memory = {"peak_allocated_bytes": peak, "param_bytes": 1, "grad_bytes": 1, "optimizer_bytes": 1,
                        "activation_bytes": 1}  # fmt: skip
    if accuracy is not None:
        record.task_metrics = {"val_accuracy": accuracy + 0.01, "test_accuracy": accuracy, "accuracy": accuracy}
    return record


def write_runs(root: Path) -> list[Path]:
    """Two run folders: an H200 (two models, batch 1 and 2, an OOM, a skip, an error, accuracy at two learning
    rates) and an A100 (one model)."""
    machine, gpu = GPUS["h200"]
    h200 = []
    for model, scale in (("tiny-llama", 1), ("llama-1.1b", 0.1)):
        for batch in (1, 2):
            for method, speed, memory in (("full", 1000, 4), ("lora", 800, 2), ("randlora", 1200, 1.5)):
                for lr, accuracy in ((1e-4, 0.80), (1e-3, 0.85)):
                    if model == "llama-1.1b" and method == "full" and batch == 2:
                        continue  # the OOM below
                    h200.append(
                        cell_record(
                            machine,
                            gpu,
                            tokens_per_s=speed * scale * batch,
                            peak=int(memory * batch * 2**30 / scale),
                            accuracy=accuracy + (0.05 if method == "randlora" else 0),
                            model=model,
                            method=METHODS[method],
                            batch_size=batch,
                            lr=lr,
                        )
                    )
    h200.append(cell_record(machine, gpu, "oom", model="llama-1.1b", method="full", batch_size=2))
    h200.append(cell_record(machine, gpu, "skipped", model="llama-1.1b", method="full", batch_size=4))
    h200.append(cell_record(machine, gpu, "error", model=HOSTILE_MODEL, method=METHODS["lora"], batch_size=1))
    h200.append(cell_record(machine, gpu, tokens_per_s=50, model=HOSTILE_MODEL, method=METHODS["lora"], batch_size=2))
    machine, gpu = GPUS["a100"]
    a100 = [
        cell_record(machine, gpu, tokens_per_s=speed, peak=memory * 2**30, model="tiny-llama", method=METHODS[method])
        for method, speed, memory in (("full", 500, 3), ("lora", 400, 2), ("randlora", 600, 1))
    ]
    folders = []
    for name, records in (("h200-run", h200), ("a100-run", a100)):
        folder = RunFolder(root / name)
        for record in records:
            write_json(folder.result_path(record.cell_hash), record)
        first = records[0].env
        info = {"argv": ["-m", "bench", "run", "--matrix", f"{name}.yaml"], "started_at": "2026-11-28T10:00:00",
                "env": {**{k: v for k, v in first.items() if k != "gpu"}, "gpus": [first["gpu"]]}}  # fmt: skip
        write_json(folder.root / "run.json", info)
        folders.append(folder.root)
    return folders
