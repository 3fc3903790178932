"""Products with a 2:4 ternary basis on the sparse tensor cores: PyTorch's semi-structured sparse tensors.

A `sparse_2_4` basis B (D, K) has exactly 2 non-zeros in every aligned group of 4 along its rows and along its
columns (bases.py), so B and Bᵀ are both in the layout `torch.sparse.to_sparse_semi_structured` takes (2:4 along
each row of the left operand). RandLoRA's materialised order multiplies by B twice per step and by Bᵀ once:

    build / rebuild    W0 + ΔW = W0 + B As        (D, K) @ (K, d)    2·D·d·K FLOPs dense, half of it on 2:4 cores
    projection         dL/dAs = Bᵀ G              (K, D) @ (D, d)

The products are exact: the non-zeros are ±sqrt(2) in the compute dtype (the same rounded value as the dense B),
and the sparse kernels accumulate in float32 as the dense ones do. At most 2× on those 6·D·d·K of the layer's
6·T·D·d + 6·D·d·K FLOPs. Needs CUDA with compute capability 8.0 or newer and bf16 / fp16; `unavailable_reason`
says why not elsewhere (the layer then runs the dense eager path, the reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SEMI_STRUCTURED_DTYPES = (torch.bfloat16, torch.float16)


def is_2_4(signs: torch.Tensor) -> bool:
    """Whether every aligned group of 4 along each row of `signs` (columns a multiple of 4) has exactly 2 non-zeros."""
    rows, cols = signs.shape
    return cols % 4 == 0 and bool(((signs != 0).view(rows, cols // 4, 4).sum(-1) == 2).all())


def unavailable_reason(device: torch.device | str, dtype: torch.dtype) -> str | None:
    """None where semi-structured products run, else one sentence saying why not."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"2:4 semi-structured products need a CUDA GPU; this tensor is on {device.type!r}."
    if dtype not in SEMI_STRUCTURED_DTYPES:
        return f"2:4 semi-structured products need bfloat16 or float16; the compute dtype is {dtype}."
    if torch.cuda.get_device_capability(device) < (8, 0):
        return "2:4 semi-structured products need a GPU of compute capability 8.0 (Ampere) or newer."
    return None


@dataclass(frozen=True)
class SemiStructuredBasis:
    """B (D, K) and Bᵀ (K, D), each compressed as a 2:4 semi-structured sparse tensor on the GPU, and B dense for
    the products the 2:4 layout does not serve (the token order puts B on the right of x)."""

    B: torch.Tensor
    BT: torch.Tensor
    dense: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.B.shape)

    @staticmethod
    def build(B: torch.Tensor) -> SemiStructuredBasis:
        """From the dense B (D, K) in the compute dtype on its GPU; a RuntimeError naming the reason elsewhere or
        when B is not 2:4 along both its rows and its columns."""
        reason = unavailable_reason(B.device, B.dtype)
        if reason is not None:
            raise RuntimeError(reason)
        if not (is_2_4(B) and is_2_4(B.T)):
            raise RuntimeError("the basis is not 2:4 along its rows and columns; use RandLoRAConfig.basis 'sparse_2_4'.")
        to_sparse = torch.sparse.to_sparse_semi_structured
        return SemiStructuredBasis(to_sparse(B.contiguous()), to_sparse(B.T.contiguous()), B)

    def mm(self, X: torch.Tensor) -> torch.Tensor:
        """B @ X (D, N) for X (K, N)."""
        return torch.mm(self.B, X)

    def t_mm(self, X: torch.Tensor) -> torch.Tensor:
        """Bᵀ @ X (K, N) for X (D, N)."""
        return torch.mm(self.BT, X)
