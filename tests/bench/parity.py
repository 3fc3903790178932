"""The model and batch the two-rank checks use on both sides (one process, and each rank under torchrun), and the
torchrun that runs every check at once (two_rank_checks.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import randlora
from bench.spec import presets

REPO = Path(__file__).resolve().parents[2]
GLOBAL_BATCH, SEQ_LEN = 4, 24  # 2 rows per rank at 2 ranks
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}  # the process group a device's ranks must have joined
# the impls the FSDP2 parity check runs on each device; the compiled impl compiles each decoder block in place
# before fully_shard wraps it
PARITY_IMPLS = {"cpu": ("eager", "compiled"), "cuda": ("eager",)}
CUDA_GPUS = torch.cuda.device_count()
GPU_PAIR = pytest.mark.skipif(
    CUDA_GPUS < 2, reason=f"the NCCL run needs 2 CUDA GPUs and torch sees {CUDA_GPUS} on this machine"
)


CONFIG = dict(r=8, alpha=16, target_modules=randlora.LLAMA_PROJECTIONS, seed=3)  # RandLoRA on every projection


def eager_tiny_llama():
    """tiny-llama as `adapted_model` builds it before adapting (seed 0, float32, on the CPU)."""
    torch.manual_seed(0)
    return presets.build("tiny-llama", torch.float32, torch.device("cpu"))[0]


def adapted_model(device: torch.device, impl: str = "eager"):
    """tiny-llama (float32, seed 0) with RandLoRA r=8 on every projection, as a cell builds it; λ drawn at random
    (it starts at zero, where γ's gradient is zero too and would prove nothing)."""
    torch.manual_seed(0)
    model, _ = presets.build("tiny-llama", torch.float32, device)
    model = randlora.adapt(model, randlora.RandLoRAConfig(**CONFIG, impl=impl)).train()
    with torch.no_grad():
        for p, value in random_lambdas(model):
            p.copy_(value)
    return model


def random_lambdas(model) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(λ, the full random value it starts from) for every λ of `model`, drawn in parameter order; λ's shape is
    the full one under FSDP2 too, so a sharded model draws the same values."""
    gen = torch.Generator().manual_seed(2)
    lambdas = [p for name, p in model.named_parameters() if name.endswith("randlora_lambda")]
    return [(p, torch.randn(p.shape, generator=gen) * 0.1) for p in lambdas]


def global_batch(device: torch.device) -> dict:
    ids = torch.randint(0, 1024, (GLOBAL_BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(1)).to(device)
    return {"input_ids": ids, "labels": ids}


def one_step(model, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """(loss, every trainable's full gradient on the CPU, the loss after one AdamW step at lr 1e-2)."""
    loss = model(**batch).loss
    loss.backward()
    grads = {name: _full(grad).detach().cpu() for name, grad in trainable_grads(model).items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    with torch.no_grad():
        loss_after = model(**batch).loss
    return loss.detach(), grads, loss_after


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor  # a DTensor under FSDP2


def trainable_grads(model) -> dict[str, torch.Tensor]:
    """Gradients of λ and γ by parameter name (FSDP2 keeps the names of the unwrapped model)."""
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}


def run_two_rank_checks(out: Path, device: str) -> dict[str, dict]:
    """Every check of two_rank_checks.py on `device` in one `python -m torch.distributed.run --standalone
    --nproc-per-node=2`, which must exit 0 (the ranks' stderr in the failure's message otherwise); returns what rank
    0 saved, by name: fsdp-<impl> for each impl of PARITY_IMPLS[device], and meta-build."""
    folder = out / "tiny-llama"
    eager_tiny_llama().save_pretrained(folder)  # safetensors, for the meta build to load shard by shard
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [str(REPO / "tests/bench/two_rank_checks.py"), str(out), str(folder), device, *PARITY_IMPLS[device]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=480, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return {path.stem: torch.load(path) for path in out.glob("*.pt")}
