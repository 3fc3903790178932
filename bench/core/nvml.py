"""The driver's view of the GPUs through NVML (pynvml), used where torch.cuda must not be touched.

The parent process lists GPUs and checks them for other processes here, because calling torch.cuda would create
a CUDA context in the parent. NVML numbers GPUs in PCI order, which need not be CUDA's order, so GPUs are always
addressed by UUID (CUDA_VISIBLE_DEVICES accepts UUIDs). Every function answers "nothing" on a machine without
NVML (no driver, a CPU-only box) instead of raising.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a CPU box can live without it
    pynvml = None


@dataclass(frozen=True)
class Gpu:
    index: int  # NVML's index (PCI order)
    uuid: str  # 'GPU-…': what CUDA_VISIBLE_DEVICES gets
    name: str
    memory_total_bytes: int


@functools.cache
def _init() -> bool:
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    return True


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _call(fn, *args, default=None):
    """An NVML query, or `default` where this GPU or driver does not support it."""
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return default


def gpus() -> list[Gpu]:
    if not _init():
        return []
    found = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        found.append(
            Gpu(index, _text(pynvml.nvmlDeviceGetUUID(handle)), _text(pynvml.nvmlDeviceGetName(handle)), memory.total)
        )
    return found


def _handle(uuid: str):
    return pynvml.nvmlDeviceGetHandleByUUID(uuid.encode() if isinstance(uuid, str) else uuid)


def describe(uuid: str) -> dict:
    """Name, memory, driver, power limit and clocks of one GPU; {} without NVML."""
    if not _init():
        return {}
    h = _handle(uuid)
    cuda_driver = _call(pynvml.nvmlSystemGetCudaDriverVersion)
    power_mw = _call(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
    return {
        "gpu_name": _text(pynvml.nvmlDeviceGetName(h)),
        "gpu_uuid": uuid,
        "gpu_memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
        "driver_version": _text(pynvml.nvmlSystemGetDriverVersion()),
        "cuda_driver_version": f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}" if cuda_driver else None,
        "power_limit_w": power_mw / 1000 if power_mw else None,
        "sm_clock_max_mhz": _call(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_SM),
        "memory_clock_max_mhz": _call(pynvml.nvmlDeviceGetMaxClockInfo, h, pynvml.NVML_CLOCK_MEM),
        "sm_clock_mhz": _call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_SM),
        "memory_clock_mhz": _call(pynvml.nvmlDeviceGetClockInfo, h, pynvml.NVML_CLOCK_MEM),
    }


def processes(uuid: str) -> list[dict]:
    """Compute processes holding memory on the GPU: [{"pid": ..., "used_bytes": ...}]; [] without NVML."""
    if not _init():
        return []
    running = _call(pynvml.nvmlDeviceGetComputeRunningProcesses, _handle(uuid), default=[])
    return [{"pid": p.pid, "used_bytes": p.usedGpuMemory} for p in running]


def used_bytes(uuid: str) -> int | None:
    """Device memory in use on the GPU by every process (None without NVML)."""
    if not _init():
        return None
    return pynvml.nvmlDeviceGetMemoryInfo(_handle(uuid)).used


def process_memory_bytes(uuid: str, pid: int) -> int | None:
    """Device memory NVML charges to `pid` on the GPU (None if the process holds none or NVML cannot say)."""
    for process in processes(uuid):
        if process["pid"] == pid:
            return process["used_bytes"]
    return None
