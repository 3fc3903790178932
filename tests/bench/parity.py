"""The model and batch the FSDP2 parity check uses on both sides: one process, and each rank under torchrun."""

from __future__ import annotations

import torch

import randlora
from bench.spec import presets

GLOBAL_BATCH, SEQ_LEN = 4, 24  # 2 rows per rank at 2 ranks


def adapted_model(device: torch.device, impl: str = "eager"):
    """tiny-llama (float32, seed 0) with RandLoRA r=8 on every projection, as a cell builds it; λ drawn at random
    (it starts at zero, where γ's gradient is zero too and would prove nothing)."""
    torch.manual_seed(0)
    model, _ = presets.build("tiny-llama", torch.float32, device)
    config = randlora.RandLoRAConfig(r=8, alpha=16, target_modules=randlora.LLAMA_PROJECTIONS, seed=3, impl=impl)
    model = randlora.adapt(model, config).train()
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("randlora_lambda"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def global_batch(device: torch.device) -> dict:
    ids = torch.randint(0, 1024, (GLOBAL_BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(1)).to(device)
    return {"input_ids": ids, "labels": ids}


def trainable_grads(model) -> dict[str, torch.Tensor]:
    """Gradients of λ and γ by parameter name (FSDP2 keeps the names of the unwrapped model)."""
    return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
