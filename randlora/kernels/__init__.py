"""Kernels and compact layouts for RandLoRA's sparse bases (Triton on CUDA; a dense torch path elsewhere)."""
from .ternary import Ell, TernaryMatrix, triton_available

__all__ = ["Ell", "TernaryMatrix", "triton_available"]
