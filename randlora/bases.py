"""The shared random bases of RandLoRA, regenerated from a seed.

One `BasisBank` serves every adapted layer of a model. It is sized to the largest (D, d) any target needs
(D = max(in, out), d = min(in, out)) and each layer slices its own corner:

    A: (r, d_max)              one matrix shared by all n terms (the paper, §4)
    B: (D_max, n_max · r)      a layer with n bases uses B[:D, :n·r]; its j-th basis is B_j = B[:D, j:n·r:n]
                               (k-major pairing, as in peft: see functional.py)

A layer gets n = ceil(d / r) bases, enough for full rank, or n = min(n_bases, ceil(d / r)) when the config caps
them (`num_bases`); the bank holds n_max = the same rule at d_max.

The bases are generated on the CPU in float32 with `torch.Generator(seed)` (A first, then B) and normalised to
unit standard deviation, so the same seed gives the same bases on any device and in any dtype. Copies on other
devices / dtypes are cached, one per (device, dtype), and never saved in a checkpoint.

Distributions (the paper's four):
    uniform      Kaiming-uniform U(-b, b), the paper's default, then divided by its std.
    normal       N(0, 1).
    sparse       ternary {-1, 0, +1} with probabilities {1/s, 1 - 2/s, 1/s}, s = 6, times sqrt(s/2) (unit variance).
    sparse_2_4   ternary with exactly 2 non-zeros in every aligned group of 4, along rows AND columns (each 4×4 tile
                 is one of the 90 0/1 matrices with two ones in every row and column, drawn uniformly; signs ±1 with
                 probability 1/2), times sqrt(2): the layout of PyTorch's semi-structured (2:4) sparse tensors for B
                 and for Bᵀ alike (impl "semi_structured"). Not one of the paper's; s = 4 in the notation below.
    very_sparse  the same with s = max(3, sqrt(D_max)). (peft puts 1/(2·sqrt(d)) on each sign instead; we follow
                 the paper.) s >= 3 keeps P(-1), P(0), P(+1) a distribution (s < 2 would make the signs overlap
                 and the std 0.92 at D_max = 3); s = 3 is uniform over {-1, 0, +1}.
Ternary bases also keep an int8 copy of their signs (`A_sign`, `B_sign`) and the scalar `ternary_scale`.

Rank caveat of the ternary bases: a column of A that is all zero (probability (1 - 2/s)^r, i.e. (2/3)^r for
`sparse`) is a zero column of every layer's ΔW (on the d side), so the update has rank d minus the number of
such columns at most. `sparse` with seed 0 at d_max = 896: 591 zero columns at r = 1 (ΔW has rank 305, not 896), 382 at
r = 2, 36 at r = 8, 1 at r = 16, none at r = 32 (expected 896·(2/3)^r: 597, 398, 35, 1.4, 2e-3).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch

from .config import Basis

# ternary basis -> s, where P(-1) = P(+1) = 1/s and the non-zeros are scaled by sqrt(s / 2) to unit variance
TERNARY_S = {"sparse": lambda D: 6.0, "very_sparse": lambda D: max(3.0, math.sqrt(D)), "sparse_2_4": lambda D: 4.0}


def num_bases(d: int, r: int, n_bases: int | None = None) -> int:
    """n = ceil(d / r), enough rank-r terms for the update to reach full rank d; at most `n_bases` when given."""
    full_rank = -(-d // r)
    return full_rank if n_bases is None else min(n_bases, full_rank)


def _ternary(shape: tuple[int, ...], s: float, gen: torch.Generator) -> torch.Tensor:
    """int8 signs in {-1, 0, +1} with P(-1) = P(+1) = 1/s."""
    u = torch.rand(shape, generator=gen, dtype=torch.float32)
    signs = torch.zeros(shape, dtype=torch.int8)
    signs[u < 1.0 / s] = -1
    signs[u >= 1.0 - 1.0 / s] = 1
    return signs


def _tiles_2_4() -> torch.Tensor:
    """The 90 0/1 matrices (4, 4) with two ones in every row and every column, int8, in a fixed order."""
    rows = [r for r in itertools.product((0, 1), repeat=4) if sum(r) == 2]  # the 6 rows with two ones
    tiles = [t for t in itertools.product(rows, repeat=4) if all(sum(col) == 2 for col in zip(*t))]
    return torch.tensor(tiles, dtype=torch.int8)


def _ternary_2_4(shape: tuple[int, ...], s: float, gen: torch.Generator) -> torch.Tensor:
    """int8 signs, 2:4 along rows and columns (`sparse_2_4` above); drawn on a shape padded to multiples of 4, then
    cut, so only a cut edge tile can hold fewer than 2 non-zeros in a group. `s` (4) is implied by the layout."""
    rows, cols = (-(-n // 4) * 4 for n in shape)
    tiles = _tiles_2_4()
    choice = torch.randint(len(tiles), (rows // 4, cols // 4), generator=gen)
    mask = tiles[choice].permute(0, 2, 1, 3).reshape(rows, cols)  # tile (i, j) at rows 4i.., columns 4j..
    signs = torch.where(torch.rand((rows, cols), generator=gen) < 0.5, -1, 1).to(torch.int8)
    return (signs * mask)[: shape[0], : shape[1]].contiguous()


TERNARY_SIGNS = {"sparse": _ternary, "very_sparse": _ternary, "sparse_2_4": _ternary_2_4}  # basis -> its draw


def _dense(shape: tuple[int, ...], basis: str, gen: torch.Generator) -> torch.Tensor:
    if basis == "normal":
        return torch.randn(shape, generator=gen, dtype=torch.float32)
    # Kaiming-uniform with a = sqrt(5) on a (rows, cols) matrix: bound = 1 / sqrt(cols).
    bound = 1.0 / math.sqrt(shape[-1])
    t = torch.rand(shape, generator=gen, dtype=torch.float32) * (2 * bound) - bound
    return t / t.std()


@dataclass
class BasisBank:
    """Shared bases for one model. `A`, `B` are the float32 CPU originals; `get` returns cached device copies."""

    r: int
    d_max: int
    D_max: int
    basis: Basis
    seed: int
    n_bases: int | None = None  # the config's cap on bases per layer (None: ceil(d / r))
    A: torch.Tensor = field(init=False, repr=False)  # (r, d_max) float32
    B: torch.Tensor = field(init=False, repr=False)  # (D_max, n_max * r) float32
    A_sign: torch.Tensor | None = field(init=False, repr=False, default=None)  # int8, ternary bases only
    B_sign: torch.Tensor | None = field(init=False, repr=False, default=None)
    ternary_scale: float = field(init=False, default=1.0)
    _cache: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.n_max = num_bases(self.d_max, self.r, self.n_bases)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        a_shape, b_shape = (self.r, self.d_max), (self.D_max, self.n_max * self.r)
        if self.basis in TERNARY_S:
            s = TERNARY_S[self.basis](self.D_max)
            self.ternary_scale = math.sqrt(s / 2.0)
            draw = TERNARY_SIGNS[self.basis]
            self.A_sign = draw(a_shape, s, gen)
            self.B_sign = draw(b_shape, s, gen)
            self.A = self.A_sign.to(torch.float32) * self.ternary_scale
            self.B = self.B_sign.to(torch.float32) * self.ternary_scale
        else:
            self.A = _dense(a_shape, self.basis, gen)
            self.B = _dense(b_shape, self.basis, gen)

    @property
    def is_ternary(self) -> bool:
        return self.A_sign is not None

    def get(self, device: torch.device | str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) on `device` in `dtype`, created once and cached."""
        key = (str(torch.device(device)), dtype)
        if key not in self._cache:
            self._cache[key] = (self.A.to(device=device, dtype=dtype), self.B.to(device=device, dtype=dtype))
        return self._cache[key]

    def get_cached(self, key, build):
        """A per-device derived form of the bases (e.g. a sparse layout), built once by `build()`."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def layer_slices(self, A: torch.Tensor, B: torch.Tensor, d: int, D: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The corner a (D, d) layer uses: A[:, :d] (r, d) and B[:D, :n·r] (D, n·r), as views."""
        n = num_bases(d, self.r, self.n_bases)
        return A[:, :d], B[:D, : n * self.r]
