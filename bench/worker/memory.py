"""Memory trackers of a cell, each a context manager or a plain function, kept as separate fields.

torch peaks      max_memory_allocated / max_memory_reserved (CUDA only): over the measured steps, and over
                 the whole cell (the peaks before the reset at the start of measurement are kept)
NVML             device memory the driver charges to this process, sampled in a background thread: it sees
                 what the caching allocator cannot (the CUDA context, cuBLAS workspaces, other libraries);
                 null where NVML cannot see this process's PID (a container with its own PID namespace), so
                 the GPU's total used memory is sampled too (the runner puts one cell on a GPU at a time)
host RSS         resident memory of this process, sampled in the same thread
breakdown        bytes of parameters, gradients, optimizer state and saved activations, counted from tensors
"""

from __future__ import annotations

import os
import sys
import threading

import psutil
import torch

from bench.core import nvml

SAMPLE_INTERVAL_S = 0.1


class TorchPeaks:
    """Peaks of torch's CUDA caching allocator; every reading is None on other devices."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._before_reset = (0, 0)

    def _peaks(self) -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)

    def reset(self) -> None:
        """Start measuring afresh (after warm-up), remembering the peaks so far for the whole-cell figures."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self._before_reset = self._peaks()
            torch.cuda.reset_peak_memory_stats(self.device)

    def read(self) -> dict:
        if not self.cuda:
            return dict.fromkeys(
                ("peak_allocated_bytes", "peak_reserved_bytes", "cell_peak_allocated_bytes", "cell_peak_reserved_bytes")
            )
        allocated, reserved = self._peaks()
        return {
            "peak_allocated_bytes": allocated,
            "peak_reserved_bytes": reserved,
            "cell_peak_allocated_bytes": max(allocated, self._before_reset[0]),
            "cell_peak_reserved_bytes": max(reserved, self._before_reset[1]),
        }


class Sampler:
    """A background thread sampling this process's NVML device memory (when a GPU UUID is given) and host RSS."""

    def __init__(self, gpu_uuid: str | None, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.gpu_uuid, self.interval_s = gpu_uuid, interval_s
        self.pid = os.getpid()
        self.process = psutil.Process(self.pid)
        self.nvml_peak_bytes: int | None = None
        self.nvml_device_peak_bytes: int | None = None
        self.host_rss_peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)

    def sample(self) -> None:
        self.host_rss_peak_bytes = max(self.host_rss_peak_bytes, self.process.memory_info().rss)
        if self.gpu_uuid:
            used = nvml.process_memory_bytes(self.gpu_uuid, self.pid)
            if used is not None:
                self.nvml_peak_bytes = max(self.nvml_peak_bytes or 0, used)
            device_used = nvml.used_bytes(self.gpu_uuid)
            if device_used is not None:
                self.nvml_device_peak_bytes = max(self.nvml_device_peak_bytes or 0, device_used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def read(self) -> dict:
        return {
            "nvml_peak_bytes": self.nvml_peak_bytes,
            "nvml_device_peak_bytes": self.nvml_device_peak_bytes,
            "host_rss_peak_bytes": self.host_rss_peak_bytes,
        }


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor: a DTensor's local shard (FSDP2 parameters, gradients, optimizer state)."""
    dtensor = sys.modules.get("torch.distributed.tensor")  # not imported here (a second); no DTensor exists before
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor.DTensor) else tensor


def tensor_bytes(tensors) -> int:
    """Bytes this process holds for `tensors` (a DTensor counts its local shard only)."""
    return sum(t.numel() * t.element_size() for t in map(_local, tensors))


def parameter_bytes(model: torch.nn.Module) -> int:
    return tensor_bytes(model.parameters())


def gradient_bytes(model: torch.nn.Module) -> int:
    """Bytes of the gradients that exist now (call after a backward, before zero_grad)."""
    return tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


class SavedActivations:
    """Bytes of the distinct tensors autograd saves for backward while active, parameters excluded.

    Counted per storage (views of one buffer count once), so the figure is what the forward keeps alive for
    the backward, on any device.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._model = model
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        # Under FSDP2 a block's parameters are all-gathered copies while it runs, and those are what its operations
        # save: each running module's parameters (its own storages at that moment) are excluded as well.
        self._running: list[set[int]] = []
        self._handles: list = []

    @staticmethod
    def _storages_of(module: torch.nn.Module) -> set[int]:
        return {_local(p).untyped_storage().data_ptr() for p in module.parameters()}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if not any(storage.data_ptr() in parameters for parameters in self._running):
            self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def _entered(self, module: torch.nn.Module, args) -> None:
        self._running.append(self._storages_of(module))

    def _left(self, module: torch.nn.Module, args, output) -> None:
        self._running.pop()

    def __enter__(self) -> SavedActivations:
        self._running.append(self._storages_of(self._model))
        for module in self._model.modules():
            self._handles += [module.register_forward_pre_hook(self._entered), module.register_forward_hook(self._left)]
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._running.clear()

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())
