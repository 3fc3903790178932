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
from ..functional import choose_contraction, delta_weight, randlora_linear, window_scaling_grads, window_weights
from ..layouts import features
from ..registry import register
from ..quantized import kind_of
from .base import AdapterLinear, autocast_off, compute_dtype

WINDOW_BATCH_BYTES = 512 * 2**20  # the stacked (g, n·r, d) temporaries of one batch of a window's open or close


def _batches(layers: list, dtype: torch.dtype) -> list[list]:
    """`layers` (one window group, one shape) in batches whose stacked scaled bases stay under WINDOW_BATCH_BYTES:
    one batch for all 22 q_proj of a 1.1B model, two for the 32 gate_proj of an 8B one."""
    first = layers[0]
    per_layer = first.num_bases * first.r * first.d * torch.empty((), dtype=dtype).element_size()
    size = max(1, WINDOW_BATCH_BYTES // per_layer)
    return [layers[i: i + size] for i in range(0, len(layers), size)]


def _sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a torch.distributed DTensor (a parameter FSDP2 has sharded)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


_PARAM_DTYPES = {"float32": lambda layer: torch.float32, "model": lambda layer: layer.float_dtype}


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
        dtype = _PARAM_DTYPES[config.param_dtype](self)
        self.randlora_lambda = nn.Parameter(torch.empty(self.r, self.num_bases, device=weight.device, dtype=dtype))
        self.randlora_gamma = nn.Parameter(torch.empty(self.num_bases, self.d, device=weight.device, dtype=dtype))
        self.reset_parameters()
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        # W0 + ΔW (D, d) while an accumulation window is open; an instance attribute from the start, so that a
        # compiled graph's guard on it sees the same dict whether or not a window has been opened
        self._window_weight: torch.Tensor | None = None

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
        rank = self.num_bases * self.r
        return choose_contraction(tokens, self.in_features, self.out_features, rank, backward, self.config.keep_weight)

    def linear_function(self):
        """The function computing y = x W0ᵀ + b + x ΔWᵀ; faster impls override this."""
        return randlora_linear

    def _scalings(self, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """λ·s and γ in `dtype`: s folds into the small λ (r, n), so the functions run with scaling 1 and a compiled
        graph does not specialise on s."""
        return (self.randlora_lambda * self.scaling).to(dtype), self.randlora_gamma.to(dtype)

    # --- the accumulation window (randlora/accumulation.py) ------------------------------------------------
    def window_key(self, dtype: torch.dtype | None):
        """Layers of one shape, orientation, basis bank and dtype share A and B: their window opens and closes as
        one batch (one batched product for the scaled bases, one for the scaling gradients)."""
        if self.config.accumulate != "window" or self.merged or not self.enabled:
            return None
        if self._window_weight is not None:
            raise ConfigError("an accumulation window is already open on this model; windows do not nest.")
        if self.quant is not None:
            raise ConfigError("RandLoRAConfig.accumulate is 'window' but a target has a quantised base, whose weight "
                              "cannot take ΔW; use accumulate 'micro_batch' over a quantised base.")
        if any(_sharded(t) for t in (self.base.weight, self.randlora_lambda, self.randlora_gamma)):
            raise ConfigError("RandLoRAConfig.accumulate is 'window' but this model's parameters are sharded (FSDP2 "
                              "DTensors) and the window builds each W0 + ΔW whole; use accumulate 'micro_batch' there.")
        weight = self.weight_out_in
        dtype = dtype or weight.dtype
        return (self.d, self.D, self.r, self.num_bases, self.in_features <= self.out_features, id(self.bank),
                self.scaling, str(weight.device), dtype, self.randlora_lambda.dtype, self.randlora_gamma.dtype)

    @classmethod
    def open_windows(cls, layers: list[RandLoRALinear], dtype: torch.dtype | None) -> None:
        first = layers[0]
        weight = first.weight_out_in
        dtype = dtype or weight.dtype
        A, B = RandLoRALinear.bases(first, weight.device, dtype)  # dense: the window's products are dense GEMMs
        d_is_in = first.in_features <= first.out_features
        for batch in _batches(layers, dtype):
            lam, gam = cls._stacked_scalings(batch, dtype)
            weights = [layer.weight_out_in.to(dtype) for layer in batch]
            built = window_weights([w if d_is_in else w.T for w in weights], A, B, lam, gam)
            for layer, w in zip(batch, built):
                layer._window_weight = w

    @classmethod
    def close_windows(cls, layers: list[RandLoRALinear], project: bool) -> None:
        weights = [layer._window_weight for layer in layers]
        for layer in layers:
            layer._window_weight = None
        used = [(layer, w.grad) for layer, w in zip(layers, weights) if w is not None and w.grad is not None]
        if not project or not used:
            return
        grads = dict(used)
        dtype = used[0][1].dtype
        A, B = RandLoRALinear.bases(used[0][0], used[0][1].device, dtype)
        for batch in _batches([layer for layer, _ in used], dtype):
            lam, gam = cls._stacked_scalings(batch, dtype)
            g_lam, g_gam = window_scaling_grads([grads[layer] for layer in batch], A, B, lam, gam)
            cls._add_scaling_grads(batch, g_lam, g_gam)

    @staticmethod
    def _add_scaling_grads(layers: list[RandLoRALinear], g_lam: torch.Tensor, g_gam: torch.Tensor) -> None:
        """Adds dL/dλ·s, dL/dγ (stacked, compute dtype) to each layer's λ.grad, γ.grad, back through _scalings."""
        scaling = layers[0].scaling
        with torch.no_grad():
            for layer, gl, gg in zip(layers, g_lam, g_gam):  # back through _scalings: the cast, then λ·s
                for param, grad in ((layer.randlora_lambda, gl.to(layer.randlora_lambda.dtype) * scaling),
                                    (layer.randlora_gamma, gg.to(layer.randlora_gamma.dtype, copy=True))):
                    if not param.requires_grad:
                        continue
                    if param.grad is None:
                        param.grad = grad
                    else:
                        param.grad += grad

    @staticmethod
    def _stacked_scalings(layers: list[RandLoRALinear], dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """_scalings of every layer, stacked: λ·s (g, r, n) and γ (g, n, d) in `dtype`, without a graph."""
        with torch.no_grad():
            lam = torch.stack([layer.randlora_lambda for layer in layers])
            gam = torch.stack([layer.randlora_gamma for layer in layers])
            return (lam * layers[0].scaling).to(dtype), gam.to(dtype)

    def _window_forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x (W0 + ΔW)ᵀ + b with the window's weight; its gradient accumulates in the weight's .grad."""
        dtype = compute_dtype(x)
        w = self._window_weight.to(dtype)
        bias = None if self.base.bias is None else self.base.bias.to(dtype)
        with autocast_off(x.device):
            return F.linear(x.to(dtype), w if self.in_features <= self.out_features else w.T, bias)

    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._window_weight is not None:
            return self._window_forward(x)
        dtype = compute_dtype(x)
        A, B = self.bases(x.device, dtype)
        lam, gam = self._scalings(dtype)
        bias = None if self.base.bias is None else self.base.bias.to(dtype)
        fn = self.linear_function()
        if self.quant is not None:  # W0 is packed codes: the base's own kernel, then ΔW in token order
            base_out = self.base(x)
            with autocast_off(x.device):
                xc = x.to(dtype)
                xa = self.dropout(xc) if self.dropout is not None and self.training else xc
                return base_out.to(dtype) + fn(xa, None, None, A, B, lam, gam, 1.0, False)
        weight = self.weight_out_in.to(dtype)
        with autocast_off(x.device):
            xc = x.to(dtype)
            if self.dropout is not None and self.training:
                base_out = F.linear(xc, weight, bias)
                return base_out + fn(self.dropout(xc), None, None, A, B, lam, gam, 1.0, False)
            materialize = self.contraction(x) == "materialized"
            if self.config.keep_weight:  # eager and compiled only (RandLoRAConfig checks)
                return fn(xc, weight, bias, A, B, lam, gam, 1.0, materialize, True)
            return fn(xc, weight, bias, A, B, lam, gam, 1.0, materialize)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, num_bases={self.num_bases}, basis={self.bank.basis}"
