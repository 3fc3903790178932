"""RandLoRA, sparse bases: placeholder registering the impl with the dense eager path."""
from __future__ import annotations

from ..registry import register
from .randlora_eager import RandLoRALinear


@register("randlora", "sparse")
class SparseRandLoRALinear(RandLoRALinear):
    pass
