"""RandLoRA, eager: the reference implementation every other impl is tested against.

Over a quantised base (a bitsandbytes 4-bit or int8 layer) the forward is base(x) by the base's own kernel plus
the adapter term in token order: y = base(x) + s · (x Asᵀ) Bᵀ (or (x B) As). The materialised order would need
W0 + ΔW as one float matrix: a dequantised copy of W0 built in forward and again in backward (or saved, which
costs the memory the quantisation saved, a whole model's bf16 weights at 70B). The token order saves only x
and h (T, n·r) and leaves W0's dequantisation to the base's kernel, so it is the one used; whether a fused
dequantise-and-add beats it is a GPU measurement for later.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..bases import BasisBank, num_bases
from ..errors import ConfigError
from ..functional import choose_contraction, delta_weight, randlora_linear
from ..registry import register
from ..quantized import kind_of
from .base import AdapterLinear, autocast_off, compute_dtype

_PARAM_DTYPES = {"float32": lambda layer: torch.float32, "model": lambda layer: layer.float_dtype}


@register("randlora", "eager")
class RandLoRALinear(AdapterLinear):
    """Trainables λ (r, n) = 0 and γ (n, d) = 1/d at start, so ΔW = 0; bases come from the model's shared bank."""

    def __init__(self, base: nn.Linear, config, bank: BasisBank) -> None:
        super().__init__(base, config)
        self.d, self.D = min(self.in_features, self.out_features), max(self.in_features, self.out_features)
        self.r, self.num_bases = config.r, num_bases(self.d, config.r, config.n_bases)
        self.scaling = config.scaling
        self.bank = bank  # a plain attribute: shared by every layer, never moved by .to() nor saved
        weight = base.weight
        dtype = _PARAM_DTYPES[config.param_dtype](self)
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
        quantized = [name for name, m in targets.items() if kind_of(m) is not None]
        if quantized and config.contraction == "materialized":
            raise ConfigError(
                f"RandLoRAConfig.contraction is 'materialized' but target {quantized[0]!r} has a quantised base, "
                "whose weight cannot take ΔW; use contraction 'auto' or 'tokens'."
            )
        d_max = max(min(m.in_features, m.out_features) for m in targets.values())
        D_max = max(max(m.in_features, m.out_features) for m in targets.values())
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
        weight = self.base.weight.to(dtype)
        bias = None if self.base.bias is None else self.base.bias.to(dtype)
        fn = self.linear_function()
        if self.quant is not None:  # W0 is packed codes: the base's own kernel, then ΔW in token order
            base_out = self.base(x)
            with autocast_off(x.device):
                xc = x.to(dtype)
                xa = self.dropout(xc) if self.dropout is not None and self.training else xc
                return base_out.to(dtype) + fn(xa, None, None, A, B, lam, gam, 1.0, False)
        with autocast_off(x.device):
            xc = x.to(dtype)
            if self.dropout is not None and self.training:
                base_out = F.linear(xc, weight, bias)
                return base_out + fn(self.dropout(xc), None, None, A, B, lam, gam, 1.0, False)
            materialize = self.contraction(x) == "materialized"
            return fn(xc, weight, bias, A, B, lam, gam, 1.0, materialize)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, num_bases={self.num_bases}, basis={self.bank.basis}"
