"""Ternary matrices S = scale · signs (signs in {-1, 0, +1}, int8) and their products with dense matrices.

A `TernaryMatrix` never holds S in a float dtype for longer than one product. It multiplies in one of two ways:

    dense   decode the int8 signs to the compute dtype and run one cuBLAS matmul (tensor cores).
            Cost: the dense 2·M·K·N FLOPs, plus a decode pass of 3·M·K bytes; the float copy dies with the call.
    gather  the Triton kernel below over padded row lists of the non-zeros (ELL layout):
                out[m, :] = add[m, :] + alpha · scale · Σ_p sign(e[m, p]) · X[|e[m, p]| - 1, :]
            Cost: nnz · N additions (CUDA cores) and nnz · N · 2 bytes gathered from L2/L1: no tensor cores.

Which one wins is a question of density ρ = nnz / (M·K). On an H200, bf16 tensor cores deliver ~790 TFLOP/s,
i.e. ~400 T multiply-adds/s, while the gather is bound by L1/L2 bandwidth at ~8-16 TB/s, i.e. ~4-8 T gathered
bf16 elements/s: a gathered element costs as much as `GATHER_COST` ≈ 50-100 dense multiply-adds, so the gather
pays only below ρ ≈ 1-2 %. That is `very_sparse` on the largest bases at best (ρ = 2/sqrt(D_max): 3.1 % at
D_max = 4096, 1.7 % at 14336 (about break-even), 1.2 % at 28672), never `sparse` (ρ = 1/3: zeros cannot beat
tensor cores there, only exact ±1 decoding and int8 storage help). bench/tools/sparse_gpu_check.py measures the
constant; `cost_factor` is a product's resulting time relative to the dense matmul, for the choice of orders.

Storage: the signs stay int8 (1 byte per entry); the ELL lists store ±(column + 1) in int16 when the column count
allows (2 bytes per non-zero), 0 for padding, rows padded to the longest row rounded up to `ELL_PAD`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the dense engine still works, the gather engine is unavailable
    triton = None

# Time of one gathered element in units of one dense tensor-core multiply-add (see the module docstring); the
# gather engine is chosen when GATHER_COST · density < 1. Measured on an H200 (bench/tools/sparse_gpu_check.py,
# reports/layers-h200/sparse_gpu_check.log): median 103 over the very_sparse products, so the gather only pays
# below ~1 % non-zeros.
GATHER_COST = 100.0
ELL_PAD = 16  # rows padded to a multiple of the kernel's slot chunk, so no chunk reads past a row
# (BLOCK_M, BLOCK_N, SLOTS, num_warps) of the gather kernel: 64 bf16 columns = one 128-byte line per gathered row;
# SLOTS (a divisor of ELL_PAD) non-zeros per row in flight. (16, 64, 8, 4) was the fastest of five tiles on an H200.
GATHER_TILE = (16, 64, 8, 4)
Engine = Literal["auto", "dense", "gather"]


def triton_available() -> bool:
    return triton is not None


@dataclass(frozen=True)
class Ell:
    """Padded row lists of a ternary matrix (M, K): entries (M, P) hold ±(k + 1), 0 = padding; counts (M,)."""

    entries: torch.Tensor  # (M, P) int16 (int32 when K >= 2**15)
    counts: torch.Tensor  # (M,) int32, non-zeros per row

    @staticmethod
    def from_signs(signs: torch.Tensor) -> Ell:
        """Each row's non-zero columns in ascending order, the sign folded into the entry."""
        M, K = signs.shape
        rows, cols = signs.nonzero(as_tuple=True)  # row-major order: columns ascend within a row
        counts = torch.bincount(rows, minlength=M)
        width = -(-max(int(counts.max()) if M else 0, 1) // ELL_PAD) * ELL_PAD
        slot = torch.arange(rows.numel(), device=signs.device) - (counts.cumsum(0) - counts)[rows]
        dtype = torch.int16 if K < 2**15 else torch.int32
        entries = torch.zeros(M, width, dtype=dtype, device=signs.device)
        entries[rows, slot] = ((cols + 1) * signs[rows, cols]).to(dtype)
        return Ell(entries, counts.to(torch.int32))


if triton is not None:

    @triton.jit
    def _ell_matmul_kernel(
        entries_ptr, counts_ptr, x_ptr, add_ptr, out_ptr,
        M, N, width,
        stride_xk, stride_xn, stride_am, stride_an, stride_om, stride_on,
        alpha,
        HAS_ADD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SLOTS: tl.constexpr,
    ):
        """out[m, n] = add[m, n] + alpha · Σ_p sign(e[m, p]) · X[|e[m, p]| - 1, n] over a (BLOCK_M, BLOCK_N) tile.

        SLOTS non-zeros per row are gathered at once, a (BLOCK_M, SLOTS, BLOCK_N) tile, so that many independent
        row loads are in flight; the loop stops at the longest row of this block, not of the whole matrix.
        """
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok, col_ok = rows < M, cols < N
        longest = tl.max(tl.load(counts_ptr + rows, mask=row_ok, other=0), axis=0)
        slots = tl.arange(0, SLOTS)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for p0 in range(0, longest, SLOTS):
            e = tl.load(entries_ptr + rows[:, None] * width + (p0 + slots)[None, :], mask=row_ok[:, None], other=0)
            e = e.to(tl.int32)  # (BLOCK_M, SLOTS)
            k = (tl.abs(e) - 1).to(tl.int64)
            sign = tl.where(e > 0, 1.0, -1.0)
            x_ptrs = x_ptr + k[:, :, None] * stride_xk + cols[None, None, :] * stride_xn
            x = tl.load(x_ptrs, mask=(e != 0)[:, :, None] & col_ok[None, None, :], other=0.0)
            acc += tl.sum(x.to(tl.float32) * sign[:, :, None], axis=1)
        acc = acc * alpha
        m, n = rows[:, None].to(tl.int64), cols[None, :]
        mask = row_ok[:, None] & col_ok[None, :]
        if HAS_ADD:
            acc += tl.load(add_ptr + m * stride_am + n * stride_an, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + m * stride_om + n * stride_on, acc.to(out_ptr.dtype.element_ty), mask=mask)


def ell_matmul(ell: Ell, X: torch.Tensor, alpha: float, add: torch.Tensor | None = None,
               out: torch.Tensor | None = None, tile: tuple[int, int, int, int] = GATHER_TILE) -> torch.Tensor:
    """add + alpha · S @ X for S given by `ell` (M, K) and X (K, N); `out` (M, N) may be `add` (in place).

    Any strides work; rows of X should be contiguous (each gather reads a run of N elements). fp32 accumulation.
    """
    M, N = ell.entries.shape[0], X.shape[1]
    if out is None:
        out = torch.empty(M, N, dtype=X.dtype, device=X.device)
    block_m, block_n, slots, num_warps = tile
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))  # row blocks vary fastest: co-running tiles share X
    a = add if add is not None else out  # a placeholder pointer when HAS_ADD is off
    _ell_matmul_kernel[grid](
        ell.entries, ell.counts, X, a, out,
        M, N, ell.entries.shape[1],
        X.stride(0), X.stride(1), a.stride(0), a.stride(1), out.stride(0), out.stride(1),
        float(alpha),
        HAS_ADD=add is not None, BLOCK_M=block_m, BLOCK_N=block_n, SLOTS=slots, num_warps=num_warps,
    )
    return out


@dataclass
class TernaryMatrix:
    """S = scale · signs (M, K), multiplied as S @ X or Sᵀ @ X by the engine its density calls for.

    `signs` is int8 on the compute device (often a view of one shared copy); `rows` / `cols` are the ELL lists of
    S and Sᵀ, built only for the gather engine. No float tensor of S's size is kept.
    """

    signs: torch.Tensor
    scale: float
    engine: Literal["dense", "gather"]
    density: float
    rows: Ell | None = None
    cols: Ell | None = None

    @staticmethod
    def build(signs: torch.Tensor, scale: float, engine: Engine = "auto") -> TernaryMatrix:
        density = int(torch.count_nonzero(signs)) / max(signs.numel(), 1)
        if engine == "auto":
            engine = "gather" if signs.is_cuda and triton is not None and GATHER_COST * density < 1.0 else "dense"
        if engine == "gather":
            return TernaryMatrix(signs, scale, engine, density, Ell.from_signs(signs), Ell.from_signs(signs.T))
        return TernaryMatrix(signs, scale, engine, density)

    @property
    def shape(self) -> torch.Size:
        return self.signs.shape

    @property
    def cost_factor(self) -> float:
        """Time of a product with S relative to a dense tensor-core matmul of the same shape (an estimate)."""
        return GATHER_COST * self.density if self.engine == "gather" else 1.0

    def mm(self, X: torch.Tensor, alpha: float, *, transpose: bool = False, add: torch.Tensor | None = None,
           inplace: bool = False) -> torch.Tensor:
        """add + alpha · S @ X (Sᵀ @ X when `transpose`), in X's dtype; written into `add` when `inplace`."""
        alpha = alpha * self.scale
        if self.engine == "gather":
            if X.stride(-1) != 1:
                X = X.contiguous()  # one copy so that every gathered row is one contiguous run
            return ell_matmul(self.cols if transpose else self.rows, X, alpha, add, add if inplace else None)
        S = self.signs.to(X.dtype)  # the transient decode: exact, since ±1 and 0 are exact in every float dtype
        S = S.T if transpose else S
        if add is None:  # beta = 0: the empty input is never read, alpha rides in cuBLAS's epilogue
            return torch.addmm(X.new_empty(S.shape[0], X.shape[1]), S, X, beta=0, alpha=alpha)
        if inplace:
            return add.addmm_(S, X, alpha=alpha)
        return torch.addmm(add, S, X, alpha=alpha)
