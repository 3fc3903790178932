"""RandLoRA, eager: the reference implementation every other impl is tested against."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..bases import BasisBank, num_bases
from ..layouts import features
from ..functional import choose_contraction, delta_weight, randlora_linear
from ..registry import register
from .base import AdapterLinear, autocast_off, compute_dtype

_PARAM_DTYPES = {"float32": lambda weight: torch.float32, "model": lambda weight: weight.dtype}


@register("randlora", "eager")
class RandLoRALinear(AdapterLinear):
    """Trainables λ (r, n) = 0 and γ (n, d) = 1/d at start, so ΔW = 0; bases come from the model's shared bank."""

    def __init__(self, base: nn.Module, config, bank: BasisBank) -> None:
        super().__init__(base, config)
        self.d, self.D = min(self.in_features, self.out_features), max(self.in_features, self.out_features)
        self.r, self.num_bases = config.r, num_bases(self.d, config.r, config.n_bases)
        self.scaling = config.scaling
        self.bank = bank  # a plain attribute: shared by every layer, never moved by .to() nor saved
        weight = base.weight
        dtype = _PARAM_DTYPES[config.param_dtype](weight)
        self.randlora_lambda = nn.Parameter(torch.empty(self.r, self.num_bases, device=weight.device, dtype=dtype))
        self.randlora_gamma = nn.Parameter(torch.empty(self.num_bases, self.d, device=weight.device, dtype=dtype))
        self.reset_parameters()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None

    @classmethod
    def trainable_shapes(cls, config, out_features: int, in_features: int) -> dict[str, tuple[int, ...]]:
        d = min(out_features, in_features)
        n = num_bases(d, config.r, config.n_bases)
        return {"randlora_lambda": (config.r, n), "randlora_gamma": (n, d)}

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """A fresh adapter: λ = 0, γ = 1/d, so ΔW = 0 (a no-op on the meta device)."""
        self.randlora_lambda.zero_()
        self.randlora_gamma.fill_(1.0 / self.d)

    @classmethod
    def shared_state(cls, model, config, targets) -> dict:
        shapes = [features(m) for m in targets.values()]  # (out, in)
        d_max, D_max = max(min(s) for s in shapes), max(max(s) for s in shapes)
        bank = BasisBank(
            r=config.r, d_max=d_max, D_max=D_max, basis=config.basis, seed=config.seed, n_bases=config.n_bases
        )
        return {"bank": bank}

    def bases(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's slices A (r, d) and B (D, n·r) on `device` in `dtype`."""
        A, B = self.bank.get(device, dtype)
        return self.bank.layer_slices(A, B, self.d, self.D)

    def delta_weight(self) -> torch.Tensor:
        A, B = self.bases(self.randlora_lambda.device, torch.float32)
        lam, gam = self.randlora_lambda.float(), self.randlora_gamma.float()
        return delta_weight(A, B, lam, gam, self.scaling, self.in_features, self.out_features)

    def contraction(self, x: torch.Tensor) -> str:
        if self.config.contraction != "auto":
            return self.config.contraction
        tokens = x.numel() // self.in_features
        backward = torch.is_grad_enabled() and (x.requires_grad or self.randlora_lambda.requires_grad)
        return choose_contraction(tokens, self.in_features, self.out_features, self.num_bases * self.r, backward)

    def linear_function(self):
        """The function computing y = x W0ᵀ + b + x ΔWᵀ; faster impls override this."""
        return randlora_linear

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x)
        A, B = self.bases(x.device, dtype)
        # s folds into the small λ (r, n): the function then runs with scaling 1, so a compiled graph does not
        # specialise on s, and no extra pass over a large tensor is spent on it.
        lam, gam = (self.randlora_lambda * self.scaling).to(dtype), self.randlora_gamma.to(dtype)
        weight = self.weight_out_in.to(dtype)
        bias = None if self.base.bias is None else self.base.bias.to(dtype)
        fn = self.linear_function()
        with autocast_off(x.device):
            xc = x.to(dtype)
            if self.dropout is not None and self.training:
                base_out = F.linear(xc, weight, bias)
                return base_out + fn(self.dropout(xc), None, None, A, B, lam, gam, 1.0, False)
            materialize = self.contraction(x) == "materialized"
            return fn(xc, weight, bias, A, B, lam, gam, 1.0, materialize)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, num_bases={self.num_bases}, basis={self.bank.basis}"
