"""RandLoRA, sparse bases: ternary B kept as int8 signs, products by tensor cores or by a gather over non-zeros.

The math is functional.py's; what changes is how the products with B (D, K = r·n) are computed and in which order.
B is a `TernaryMatrix` (kernels/ternary.py): int8 signs on the device, never a dense float copy, multiplied either
by decoding signs inside one cuBLAS call ("dense": zeros cost full price) or by a Triton kernel over padded lists
of the non-zeros ("gather": cost ∝ density, but on CUDA cores). Its `cost_factor` β is the time of a B-product
relative to a dense matmul, and the contraction orders are chosen by multiply-adds with B-products weighted by β.

All products are S @ X with S = B or Bᵀ on the left (the gather walks rows of B or of Bᵀ); T tokens, K = r·n:
    forward   materialized        W0 + ΔW = W0 + s·B As (transposed views when in > out)     β·D·d·K
              tokens, in <= out   hᵀ = As xᵀ (K, T);  yᵀ += s·B hᵀ                            T·K·d + β·T·D·K
              tokens, in > out    hᵀ = Bᵀ xᵀ (K, T);  y += s·h As                             β·T·D·K + T·K·d
    dL/dAs    tokens, in <= out   ghᵀ = Bᵀ gᵀ (K, T);  dL/dAs = s·ghᵀ x                       β·T·D·K + T·K·d
              tokens, in > out    dL/dAs = s·hᵀ g, hᵀ from a token forward or recomputed      T·K·d (+ β·T·D·K)
              weight (eager's)    G = dL/dΔW_Dd (D, d);  dL/dAs = s·Bᵀ G                       T·D·d + β·D·d·K
    dL/dx     rebuild             g (W0 + ΔW), W0 + ΔW rebuilt                                 T·D·d + β·D·d·K
              tokens, in <= out   g W0 + s·gh As, gh from the token route or computed         T·D·d + T·K·d (+ β·T·D·K)
              tokens, in > out    g W0 + s·(As gᵀ)ᵀ Bᵀ                                         T·D·d + T·K·d + β·T·D·K
Every forward also costs the frozen x W0ᵀ (T·D·d). The token route for dL/dAs wins while T < d (G is T·D·d), the weight
route beyond. With the dense engine (β ≈ 1) the best plan equals eager's count on square layers and saves 1/17 on
(4096, 14336)-like ones at T = 4096; only a small β (the gather at low density) saves more.

On a CPU, or without Triton, the layer is the eager layer: same bases, same function.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..bases import TERNARY_S
from ..errors import ConfigError
from ..functional import randlora_linear, scaled_A, scaling_grads
from ..kernels.ternary import TernaryMatrix, triton_available
from ..registry import register
from .base import compute_dtype
from .randlora_eager import RandLoRALinear


def step_macs(tokens, d, D, rank, beta, d_is_in, materialize, rebuild, weight_route, backward, grad_x) -> float:
    """Multiply-adds of one forward (+ backward) step, B-products weighted by β (the table in the module docstring)."""
    T, K = tokens, rank
    base, build, b_tokens = T * D * d, beta * D * d * K, beta * T * D * K
    total = build + base if materialize else base + T * K * d + b_tokens
    if not backward:
        return total
    if weight_route:  # G = dL/dΔW_Dd (D, d), then Bᵀ G
        total += base + build
    else:  # gh = g B (in <= out) or h = x B recomputed after a materialized forward (in > out)
        total += T * K * d + (b_tokens if d_is_in or materialize else 0)
    if grad_x:
        if rebuild:
            total += build + base
        else:  # in <= out reuses gh when the token route computed it
            total += base + T * K * d + (b_tokens if not d_is_in or weight_route else 0)
    return total


def choose_orders(tokens, d, D, rank, beta, d_is_in, backward, grad_x, materialize=None) -> tuple[bool, bool, bool]:
    """(materialize, rebuild, weight_route) with the fewest weighted multiply-adds; `materialize` may be fixed.

    Ties go to the token orders, which never build a weight-sized tensor.
    """
    options = [o for o in itertools.product((False, True), repeat=3) if materialize in (None, o[0])]
    return min(options, key=lambda o: (step_macs(tokens, d, D, rank, beta, d_is_in, *o, backward, grad_x), o))


def _float32(value: float) -> float:
    """`value` rounded to float32, as in the bank's float32 B = signs · scale, so both are the same matrix."""
    return float(torch.tensor(value, dtype=torch.float32))


def _effective_weight(weight, B: TernaryMatrix, As, scaling, d_is_in):
    """W0 + ΔW (out, in) from one fused product (ΔW alone when weight is None); a transposed view when in > out."""
    if d_is_in:
        return B.mm(As, scaling, add=weight)
    return B.mm(As, scaling, add=None if weight is None else weight.T).T


class SparseRandLoRAFunction(torch.autograd.Function):
    """functional.RandLoRALinearFunction with B a TernaryMatrix and the backward orders chosen by the caller:
    `rebuild` for dL/dx (W0 + ΔW rebuilt, or tokens), `weight_route` for dL/dAs (through G, or tokens)."""

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, lam, gam, scaling: float, materialize: bool, rebuild: bool,
                weight_route: bool):
        x2 = x.reshape(-1, x.shape[-1])
        d_is_in = x.shape[-1] == A.shape[1]
        As = scaled_A(A, lam, gam)  # (K, d)
        hT = None
        if materialize:
            y = F.linear(x2, _effective_weight(weight, B, As, scaling, d_is_in), bias)
        elif d_is_in:
            y = F.linear(x2, weight, bias) if weight is not None else x2.new_zeros(x2.shape[0], B.shape[0])
            B.mm(As @ x2.T, scaling, add=y.T, inplace=True)  # yᵀ += s · B hᵀ
        else:
            hT = B.mm(x2.T, 1.0, transpose=True)  # (K, T) = (x B)ᵀ
            y = torch.mm(hT.T, As).mul_(scaling) if weight is None else torch.addmm(
                F.linear(x2, weight, bias), hT.T, As, alpha=scaling
            )
        ctx.save_for_backward(x, weight, A, lam, gam, None if weight_route else hT)
        ctx.basis, ctx.scaling, ctx.d_is_in = B, scaling, d_is_in
        ctx.rebuild, ctx.weight_route, ctx.has_bias = rebuild, weight_route, bias is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, A, lam, gam, hT = ctx.saved_tensors
        B, s, d_is_in = ctx.basis, ctx.scaling, ctx.d_is_in
        x2 = x.reshape(-1, x.shape[-1])
        g = grad_out.reshape(-1, grad_out.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        As = scaled_A(A, lam, gam)
        grad_x = grad_w = grad_b = G = ghT = None
        # s multiplies the small dL/dλ, dL/dγ at the end (as in eager), or rides in an epilogue's alpha
        if ctx.weight_route:
            G = g.T @ x2 if d_is_in else x2.T @ g  # dL/dΔW_Dd (D, d)
            g_As = B.mm(G, 1.0, transpose=True)
        elif d_is_in:
            ghT = B.mm(g.T, 1.0, transpose=True)  # (K, T) = (g B)ᵀ
            g_As = ghT @ x2
        else:
            hT = hT if hT is not None else B.mm(x2.T, 1.0, transpose=True)
            g_As = hT @ g
        if need_x and ctx.rebuild:
            grad_x = g @ _effective_weight(weight, B, As, s, d_is_in)
        elif need_x and d_is_in:
            ghT = ghT if ghT is not None else B.mm(g.T, 1.0, transpose=True)
            grad_x = torch.mm(ghT.T, As).mul_(s) if weight is None else torch.addmm(g @ weight, ghT.T, As, alpha=s)
        elif need_x:
            grad_x = g @ weight if weight is not None else g.new_zeros(g.shape[0], B.shape[0])
            B.mm(As @ g.T, s, add=grad_x.T, inplace=True)  # dL/dxᵀ += s · B (g Asᵀ)ᵀ
        if need_w and weight is not None:
            grad_w = g.T @ x2 if G is None else (G if d_is_in else G.T)
        if ctx.has_bias and need_b:
            grad_b = g.sum(0)
        g_lam, g_gam = scaling_grads(g_As, A, lam, gam)
        if grad_x is not None:
            grad_x = grad_x.view(x.shape)
        return grad_x, grad_w, grad_b, None, None, g_lam * s, g_gam * s, None, None, None, None


def sparse_randlora_linear(x, weight, bias, A, B, lam, gam, scaling: float, materialize: bool) -> torch.Tensor:
    """randlora_linear's signature; B a TernaryMatrix runs the sparse function, a dense tensor the eager one."""
    if not isinstance(B, TernaryMatrix):
        return randlora_linear(x, weight, bias, A, B, lam, gam, scaling, materialize)
    (D, K), d = B.shape, A.shape[1]
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (x, lam, gam))
    tokens = x.numel() // x.shape[-1]
    _, rebuild, weight_route = choose_orders(
        tokens, d, D, K, B.cost_factor, x.shape[-1] == d, backward, x.requires_grad, materialize
    )
    return SparseRandLoRAFunction.apply(x, weight, bias, A, B, lam, gam, scaling, materialize, rebuild, weight_route)


@register("randlora", "sparse")
class SparseRandLoRALinear(RandLoRALinear):
    """The eager layer with ternary bases as int8 `TernaryMatrix`es on CUDA (with Triton), eager everywhere else."""

    @classmethod
    def shared_state(cls, model, config, targets) -> dict:
        if config.basis not in TERNARY_S:
            raise ConfigError(
                f"RandLoRAConfig.basis is {config.basis!r} but impl 'sparse' needs ternary bases; "
                f"allowed values are {', '.join(map(repr, TERNARY_S))}."
            )
        return super().shared_state(model, config, targets)

    @staticmethod
    def accelerated(device) -> bool:
        """Whether this device gets the sparse path (CUDA with Triton); elsewhere the layer is the eager one."""
        return torch.device(device).type == "cuda" and triton_available()

    def bases(self, device, dtype):
        """A (r, d) in `dtype` and B as a TernaryMatrix (D, r·n) on an accelerated device, else eager's slices."""
        if not self.accelerated(device):
            return super().bases(device, dtype)
        bank, key, rank = self.bank, str(torch.device(device)), self.num_bases * self.r
        A = bank.get_cached(("A", key, dtype), lambda: bank.A.to(device=device, dtype=dtype))
        signs = bank.get_cached(("B_sign", key), lambda: bank.B_sign.to(device))  # int8, shared by all layers
        B = bank.get_cached(
            ("B_ternary", key, self.D, rank),
            lambda: TernaryMatrix.build(signs[: self.D, :rank], _float32(bank.ternary_scale)),
        )
        return A[:, : self.d], B

    def delta_weight(self) -> torch.Tensor:
        device = self.randlora_lambda.device
        if not self.accelerated(device):
            return super().delta_weight()
        A, B = self.bases(device, torch.float32)
        As = scaled_A(A, self.randlora_lambda.float(), self.randlora_gamma.float())
        dw = B.mm(As, self.scaling)  # (D, d)
        return dw if self.in_features <= self.out_features else dw.T

    def contraction(self, x: torch.Tensor) -> str:
        if not self.accelerated(x.device) or self.config.contraction != "auto":
            return super().contraction(x)
        _, B = self.bases(x.device, compute_dtype(x))
        backward = torch.is_grad_enabled() and (x.requires_grad or self.randlora_lambda.requires_grad)
        materialize, _, _ = choose_orders(
            x.numel() // self.in_features, self.d, self.D, self.num_bases * self.r, B.cost_factor,
            self.in_features <= self.out_features, backward, x.requires_grad,
        )
        return "materialized" if materialize else "tokens"

    def linear_function(self):
        return sparse_randlora_linear
