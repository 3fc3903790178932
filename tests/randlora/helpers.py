"""Tiny models and a float64 reference of RandLoRA's update straight from the formula."""
from __future__ import annotations

import torch
from torch import nn


class TinyMLP(nn.Module):
    """Odd shapes on purpose: in > out, out > in, and d not divisible by the ranks used in the tests."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(19, 41)  # out > in, d = 19
        self.mid = nn.Linear(41, 41, bias=False)  # square
        self.down = nn.Linear(41, 23)  # in > out, d = 23
        self.head = nn.Linear(23, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.down(torch.tanh(self.mid(torch.tanh(self.up(x)))))))


TARGETS = ("up", "mid", "down")


def reference_delta(A: torch.Tensor, B: torch.Tensor, lam, gam, scaling: float, in_f: int, out_f: int) -> torch.Tensor:
    """ΔW = s · Σ_j B_j diag(λ_j) A diag(γ_j), B_j = B[:, j::n], summed term by term in float64."""
    r, n = lam.shape
    A, B, lam, gam = (t.double() for t in (A, B, lam, gam))
    dw = torch.zeros(B.shape[0], A.shape[1], dtype=torch.float64)
    for j in range(n):
        B_j = B[:, j : n * r : n]  # (D, r)
        dw += B_j @ torch.diag(lam[:, j]) @ A @ torch.diag(gam[j])
    dw = scaling * dw
    return dw if in_f <= out_f else dw.T


def randomize_(model: nn.Module, seed: int = 0, scale: float = 1.0) -> None:
    """Fresh random trainables (not the zero init), so that ΔW ≠ 0 and every path is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and any(k in name for k in ("randlora_", "lora_")):
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if "gamma" in name else 0.2) * scale)
