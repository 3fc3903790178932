"""RandLoRA with a 2:4 ternary basis on the sparse tensor cores (kernels/semi_structured.py); eager elsewhere.

The materialised order of functional.py with the two kinds of B-products done by semi-structured sparse tensors:

    forward     W0 + ΔW = W0 + B As (Dd orientation; transposed view when in > out),  y = x (W0 + ΔW)ᵀ + b
    backward    dL/dx = g (W0 + ΔW) rebuilt,  G = dL/dΔW_Dd,  dL/dAs = Bᵀ G,  then functional.scaling_grads

On a CUDA GPU (compute capability >= 8.0) in bf16 / fp16 a call takes this order where the eager layer's FLOP model
(or `RandLoRAConfig.contraction`) picks the materialised order; where it picks the token order (the tall MLP shapes
at a few thousand tokens) the call is the eager token-order function on the dense basis, since those products put B
on the right of x, where the 2:4 layout does not apply. Forcing the materialised order everywhere cost the 8B step
~53 TF (reports/PERF_NOTES.md, v4 measured). Anywhere else the layer is the eager layer with the same (dense) 2:4
basis, the reference. The layer's adapted forward runs outside torch.compile (`torch.compiler.disable`):
a compiled block breaks its graph around it rather than trace the sparse tensor subclasses (and the device query that
picks them) through a custom autograd function; compare it with the eager impl uncompiled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..functional import randlora_linear, scaled_A, scaling_grads
from ..kernels.semi_structured import SemiStructuredBasis, unavailable_reason
from ..registry import register
from .randlora_eager import RandLoRALinear

BASIS = "sparse_2_4"


def _effective_weight(weight, B: SemiStructuredBasis, As, d_is_in: bool) -> torch.Tensor:
    """W0 + ΔW (out, in), or ΔW alone when weight is None; B As is 2·D·d·K FLOPs on the 2:4 cores."""
    w = B.mm(As)  # (D, d)
    if weight is not None:
        w = w + (weight if d_is_in else weight.T)
    return w if d_is_in else w.T


class SemiStructuredRandLoRAFunction(torch.autograd.Function):
    """functional.RandLoRALinearFunction's materialised branch with B a SemiStructuredBasis (scaling folded in λ)."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, lam, gam):
        x2 = x.reshape(-1, x.shape[-1])
        d_is_in = x.shape[-1] == A.shape[1]
        y = F.linear(x2, _effective_weight(weight, B, scaled_A(A, lam, gam), d_is_in), bias)
        ctx.save_for_backward(x, weight, A, lam, gam)
        ctx.basis, ctx.d_is_in, ctx.has_bias = B, d_is_in, bias is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, A, lam, gam = ctx.saved_tensors
        B, d_is_in = ctx.basis, ctx.d_is_in
        x2, g = x.reshape(-1, x.shape[-1]), grad_out.reshape(-1, grad_out.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = (g @ _effective_weight(weight, B, scaled_A(A, lam, gam), d_is_in)).view(x.shape)
        G = g.T @ x2 if d_is_in else x2.T @ g  # dL/dΔW_Dd (D, d)
        if need_w and weight is not None:
            grad_w = G if d_is_in else G.T
        if ctx.has_bias and need_b:
            grad_b = g.sum(0)
        g_lam, g_gam = scaling_grads(B.t_mm(G), A, lam, gam)
        return grad_x, grad_w, grad_b, None, None, g_lam, g_gam


def semi_structured_randlora_linear(x, weight, bias, A, B, lam, gam, scaling: float, materialize: bool):
    """randlora_linear's signature; B a SemiStructuredBasis runs the 2:4 function in the materialised order and the
    eager function on its dense copy in the token order; a dense B always the eager one."""
    if not isinstance(B, SemiStructuredBasis):
        return randlora_linear(x, weight, bias, A, B, lam, gam, scaling, materialize)
    if not materialize:
        return randlora_linear(x, weight, bias, A, B.dense, lam, gam, scaling, False)
    if scaling != 1.0:
        lam = lam * scaling
    return SemiStructuredRandLoRAFunction.apply(x, weight, bias, A, B, lam, gam)


@register("randlora", "semi_structured")
class SemiStructuredRandLoRALinear(RandLoRALinear):
    """The eager layer whose B-products run on the 2:4 sparse tensor cores where `unavailable_reason` is None."""

    @classmethod
    def shared_state(cls, model, config, targets) -> dict:
        if config.basis != BASIS:
            raise ConfigError(
                f"RandLoRAConfig.basis is {config.basis!r} but impl 'semi_structured' needs the 2:4 basis; "
                f"set basis to {BASIS!r}."
            )
        return super().shared_state(model, config, targets)

    def bases(self, device, dtype):
        """A (r, d) and B as a SemiStructuredBasis where 2:4 products run, else the eager layer's dense slices."""
        A, B = super().bases(device, dtype)
        if unavailable_reason(device, dtype) is not None:
            return A, B
        key = ("semi_structured", str(torch.device(device)), dtype, tuple(B.shape))
        return A, self.bank.get_cached(key, lambda: SemiStructuredBasis.build(B))

    def linear_function(self):
        return semi_structured_randlora_linear

    @torch.compiler.disable
    def adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().adapted_forward(x)
