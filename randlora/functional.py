"""RandLoRA's math: the update, its two contraction orders, and a backward that recomputes instead of storing.

Notation for one adapted layer with frozen weight W0 of shape (out, in):
    d = min(in, out), D = max(in, out), n = ceil(d / r) (or min(n_bases, ceil(d / r))), s = alpha / r
    A  (r, d)      shared random basis          B  (D, r·n)   the shared random bases, side by side
    λ  (r, n)      trainable, λ[:, j] = diag(Λ_j)   γ  (n, d)  trainable, γ[j] = diag(Γ_j)

    As = scaled_A(A, λ, γ)  (r·n, d),  As[k·n + j, c] = λ[k, j] · A[k, c] · γ[j, c]     (k-major rows)
    ΔW_Dd = s · B @ As = s · Σ_j B_j diag(λ_j) A diag(γ_j),   B_j = B[:, j::n]          (D, d)
    ΔW = ΔW_Dd if in <= out else ΔW_Ddᵀ                                                 (out, in)

The k-major pairing (column c of B meets row k = c // n of A and γ_j with j = c % n) is the one peft's RandLora
uses (its (r, n, d) scaled basis flattened against its (D, n, r) basis flattened), so with the same A, B, λ, γ
both compute the same ΔW and adapters export to peft exactly. It is a relabelling of the paper's B_j only.

Forward y = x W0ᵀ + b + x ΔWᵀ, computed in one of two orders (T tokens):
    tokens:        in <= out:  h = x Asᵀ (T, n·r),  y += s · h Bᵀ
                   in  > out:  h = x B   (T, n·r),  y += s · h As
    materialized:  y = x (W0 + ΔW)ᵀ + b,  W0 + ΔW built by one addmm and dropped after use (or, with
                   keep_weight, saved for backward: one weight-sized tensor per layer held from forward to
                   backward instead of a rebuild of 2·D·d·n·r FLOPs).

Backward, with g = dL/dy (T, out):
    tokens, in <= out:  gh = s · g B,   dL/dx = g W0 + gh As,   dL/dAs = ghᵀ x
    tokens, in  > out:  gh = s · g Asᵀ, dL/dx = g W0 + gh Bᵀ,   dL/dAs = s · hᵀ g
    materialized:       dL/dx = g (W0 + ΔW)  (rebuilt, or kept from forward),  G = dL/dΔW_Dd (gᵀx or xᵀg),  dL/dAs = s · Bᵀ G
    then from dL/dAs (viewed (r, n, d)):
        dL/dλ[k, j] = Σ_c dAs[k, j, c] · A[k, c] · γ[j, c]
        dL/dγ[j, c] = Σ_k dAs[k, j, c] · A[k, c] · λ[k, j]

By default nothing weight-sized is saved for backward: only x, h (tokens path, in > out: (T, n·r)) and the small
λ, γ. As and W0 + ΔW are recomputed in backward (peft keeps the scaled (n·r, d) basis of every layer alive instead);
keep_weight=True keeps W0 + ΔW instead of rebuilding it, when memory allows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def scaled_A(A: torch.Tensor, lam: torch.Tensor, gam: torch.Tensor) -> torch.Tensor:
    """As (r·n, d) with As[k·n + j, c] = λ[k, j] · A[k, c] · γ[j, c]; with λ (g, r, n) and γ (g, n, d), the g
    layers' (g, r·n, d) at once."""
    r, n = lam.shape[-2:]
    return (lam.unsqueeze(-1) * A.unsqueeze(1) * gam.unsqueeze(-3)).reshape(*lam.shape[:-2], r * n, A.shape[1])


def delta_weight(A, B, lam, gam, scaling: float, in_features: int, out_features: int) -> torch.Tensor:
    """ΔW (out, in) = s · B @ As, transposed when in > out."""
    dw = scaling * (B @ scaled_A(A, lam, gam))  # (D, d)
    return dw if in_features <= out_features else dw.T


def scaling_grads(g_As: torch.Tensor, A, lam, gam) -> tuple[torch.Tensor, torch.Tensor]:
    """(dL/dλ (r, n), dL/dγ (n, d)) from dL/dAs (r·n, d), through one (r, n, d) temporary; with a leading layer
    dimension g on all three (λ (g, r, n), γ (g, n, d)), the g layers' at once."""
    r, n = lam.shape[-2:]
    gA = g_As.view(*g_As.shape[:-2], r, n, -1) * A.unsqueeze(1)  # (..., r, n, d)
    g_lam = torch.einsum("...knd,...nd->...kn", gA, gam)  # (..., r, n)
    g_gam = torch.einsum("...knd,...kn->...nd", gA, lam)  # (..., n, d)
    return g_lam, g_gam


def window_weights(weights_Dd: list[torch.Tensor], A, B, lam: torch.Tensor, gam: torch.Tensor) -> list[torch.Tensor]:
    """W0 + ΔW on the (D, d) orientation for g layers of one shape that share A and B, each a fresh contiguous leaf
    that requires grad (the accumulation window).

    weights_Dd: each layer's W0 as (D, d) (a transposed view when in > out); lam (g, r, n) already holds s, gam
    (g, n, d). Built without a graph (λ, γ are constant in the window): 2·D·d·K FLOPs per layer once per window, the
    g scaled bases in one batched product, then one addmm per layer. Forward then uses each weight (transposed when
    in > out) and autograd accumulates G = dL/d(W0 + ΔW)_Dd = Σ over the window's micro-batches into its .grad:
    6·T·D·d per micro-batch, as full fine-tuning.
    """
    with torch.no_grad():
        As = scaled_A(A, lam, gam)  # (g, K, d)
        return [torch.addmm(w0, B, a).requires_grad_() for w0, a in zip(weights_Dd, As)]


def window_scaling_grads(Gs: list[torch.Tensor], A, B, lam: torch.Tensor, gam: torch.Tensor):
    """(dL/dλ (g, r, n), dL/dγ (g, n, d)) from G = dL/dΔW_Dd (D, d) of g layers of one shape: dL/dAs = Bᵀ G (2·D·d·K
    FLOPs per layer, once per window), then scaling_grads' two reductions for all g layers at once. lam holds s;
    the caller takes the gradients back through s and the dtype cast to the parameters."""
    with torch.no_grad():
        r, n = lam.shape[-2:]
        dAs = torch.empty(len(Gs), r * n, gam.shape[-1], device=Gs[0].device, dtype=Gs[0].dtype)
        for G, out in zip(Gs, dAs):
            torch.mm(B.T, G, out=out)
        g_lam, g_gam = scaling_grads(dAs, A, lam, gam)
        # contiguous: einsum may return permuted views, and a fused optimizer refuses gradients whose strides are
        # not their parameters'
        return g_lam.contiguous(), g_gam.contiguous()


def contraction_flops(
    tokens: int, in_features: int, out_features: int, rank: int, backward: bool, keep_weight: bool = False
) -> dict[str, int]:
    """Extra FLOPs over the frozen base matmul for each contraction order (rank = n·r).

    tokens:       forward 2·T·nr·(in + out); backward 2·T·nr·(in + out + d)
    materialized: forward 2·D·d·nr (build W0 + ΔW); backward 2·D·d·nr (rebuild, none with keep_weight)
                  + 2·T·D·d (dL/dΔW) + 2·D·d·nr (Bᵀ G)
    """
    d, D = min(in_features, out_features), max(in_features, out_features)
    tokens_fwd = 2 * tokens * rank * (in_features + out_features)
    tokens_bwd = 2 * tokens * rank * (in_features + out_features + d)
    mat_fwd = 2 * D * d * rank
    mat_bwd = (2 if keep_weight else 4) * D * d * rank + 2 * tokens * D * d
    return {
        "tokens": tokens_fwd + (tokens_bwd if backward else 0),
        "materialized": mat_fwd + (mat_bwd if backward else 0),
    }


def choose_contraction(
    tokens: int, in_features: int, out_features: int, rank: int, backward: bool, keep_weight: bool = False
) -> str:
    """The cheaper order by FLOP count (ties go to the token path, which never builds a weight-sized tensor)."""
    flops = contraction_flops(tokens, in_features, out_features, rank, backward, keep_weight)
    return "materialized" if flops["materialized"] < flops["tokens"] else "tokens"


def _effective_weight(weight, A, B, lam, gam, scaling):
    """W0 + ΔW (out, in) in one addmm; a transposed view when in > out."""
    out_features, in_features = weight.shape
    As = scaled_A(A, lam, gam)
    if in_features <= out_features:
        return torch.addmm(weight, B, As, alpha=scaling)
    return torch.addmm(weight.T, B, As, alpha=scaling).T


class RandLoRALinearFunction(torch.autograd.Function):
    """y = x W0ᵀ + b + x ΔWᵀ with a recomputing backward (module docstring has the derivation).

    weight / bias may be None: then only the adapter term x ΔWᵀ is returned (token order), which is how dropout
    on the adapter path is served. All tensors arrive in the compute dtype; the caller casts λ, γ. keep_weight
    (materialised order only) saves W0 + ΔW for backward instead of rebuilding it there.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, A, B, lam, gam, scaling: float, materialize: bool, keep_weight: bool = False):
        x2 = x.reshape(-1, x.shape[-1])
        d_is_in = x.shape[-1] == A.shape[1]  # the layer's input is its smaller side d (in <= out)
        h = kept = None
        if materialize:
            w = _effective_weight(weight, A, B, lam, gam, scaling)
            y = F.linear(x2, w, bias)
            kept = w if keep_weight else None
        else:
            As = scaled_A(A, lam, gam)
            if d_is_in:
                h_in, right = x2 @ As.T, B.T  # (T, r·n), (r·n, D)
            else:
                h = h_in = x2 @ B  # (T, r·n)
                right = As  # (r·n, d)
            if weight is None:
                y = torch.mm(h_in, right) * scaling
            else:
                y = torch.addmm(F.linear(x2, weight, bias), h_in, right, alpha=scaling)
        ctx.save_for_backward(x, weight, A, B, lam, gam, h, kept)
        ctx.scaling, ctx.materialize, ctx.d_is_in = scaling, materialize, d_is_in
        ctx.has_bias = bias is not None
        return y.view(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, A, B, lam, gam, h, kept = ctx.saved_tensors
        s = ctx.scaling
        x2 = x.reshape(-1, x.shape[-1])
        g = grad_out.reshape(-1, grad_out.shape[-1])
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        # s multiplies the small dL/dλ, dL/dγ at the end instead of a (T, r·n) or weight-sized tensor here
        if ctx.materialize:
            if need_x:
                grad_x = g @ (kept if kept is not None else _effective_weight(weight, A, B, lam, gam, s))
            G = g.T @ x2 if ctx.d_is_in else x2.T @ g  # dL/dΔW_Dd (D, d)
            if need_w:
                grad_w = G if ctx.d_is_in else G.T
            g_As = B.T @ G
        else:
            As = scaled_A(A, lam, gam)
            if ctx.d_is_in:
                gh = g @ B  # (T, r·n)
                left, right, g_As = gh, As, gh.T @ x2
            else:
                gh = g @ As.T  # (T, r·n)
                left, right, g_As = gh, B.T, h.T @ g
            if need_x:
                grad_x = (
                    torch.mm(left, right) * s if weight is None else torch.addmm(g @ weight, left, right, alpha=s)
                )
            if need_w and weight is not None:
                grad_w = g.T @ x2
        if ctx.has_bias and need_b:
            grad_b = g.sum(0)
        g_lam, g_gam = scaling_grads(g_As, A, lam, gam)
        if grad_x is not None:
            grad_x = grad_x.view(x.shape)
        if s != 1.0:  # the layers fold s into λ and pass 1: no two extra kernels per backward then
            g_lam, g_gam = g_lam * s, g_gam * s
        return grad_x, grad_w, grad_b, None, None, g_lam, g_gam, None, None, None


def randlora_linear(
    x, weight, bias, A, B, lam, gam, scaling: float, materialize: bool, keep_weight: bool = False
) -> torch.Tensor:
    """Functional entry point: A, B are the layer's slices (r, d) and (D, n·r); λ, γ already in x's dtype."""
    return RandLoRALinearFunction.apply(x, weight, bias, A, B, lam, gam, scaling, materialize, keep_weight)
