"""LoRA, eager: ΔW = (alpha / r) · B A, A Kaiming-uniform (a = √5), B zero at start."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .base import AdapterLinear, autocast_off, compute_dtype


@register("lora", "eager")
class LoRALinear(AdapterLinear):
    def __init__(self, base: nn.Module, config) -> None:
        super().__init__(base, config)
        weight = base.weight
        dtype = torch.float32 if config.param_dtype == "float32" else self.float_dtype
        self.r, self.scaling = config.r, config.scaling
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, device=weight.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, config.r, device=weight.device, dtype=dtype))
        self.reset_parameters()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    @classmethod
    def trainable_shapes(cls, config, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        return {"lora_A": (config.r, in_features), "lora_B": (out_features, config.r)}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh adapter: A Kaiming-uniform (a = √5), B = 0, so ΔW = 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B.zero_()

    def delta_weight(self) -> torch.Tensor:
        return self.scaling * (self.lora_B.float() @ self.lora_A.float())

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        y = self.base(x)
        with autocast_off(x.device):
            h = F.linear(self.dropout(x.to(dtype)), self.lora_A.to(dtype))  # (..., r)
            return y.to(dtype) + F.linear(h, self.lora_B.to(dtype)) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}"
