"""The shared bases: seeded, device- and dtype-independent, full rank, with the paper's sparsities."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import pytest
import torch

from randlora.bases import BasisBank, num_bases
from randlora.functional import delta_weight

from .helpers import reference_delta

BASES = ["uniform", "normal", "sparse", "very_sparse", "sparse_2_4"]


def _digest(bank: BasisBank) -> str:
    return hashlib.sha256(bank.A.numpy().tobytes() + bank.B.numpy().tobytes()).hexdigest()


def _random_update(bank: BasisBank, d: int, D: int) -> torch.Tensor:
    n = num_bases(d, bank.r)
    gen = torch.Generator().manual_seed(1)
    lam, gam = torch.randn(bank.r, n, generator=gen), torch.randn(n, d, generator=gen)
    return reference_delta(bank.A[:, :d], bank.B[:D, : n * bank.r], lam, gam, 1.0, d, D)


@pytest.mark.parametrize(
    "basis",
    [
        "uniform",
        "normal",
        "sparse",
        "sparse_2_4",
        pytest.param(
            "very_sparse",
            marks=pytest.mark.xfail(
                strict=True,
                reason="the shared A is ternary with P(0) = 1 - 2/sqrt(D): a column of A that is all zero "
                "(probability (1 - 2/s)^r) gives a zero column of ΔW, so very_sparse updates are not full rank",
            ),
        ),
    ],
)
def test_update_has_full_rank_for_random_scalings(basis):
    r, d, D = 32, 96, 256  # n = 3 bases of rank 32 cover d = 96
    bank = BasisBank(r=r, d_max=d, D_max=D, basis=basis, seed=0)
    assert torch.linalg.matrix_rank(_random_update(bank, d, D)).item() == d


def test_very_sparse_update_rank_is_the_number_of_nonzero_columns_of_A():
    r, d, D = 32, 96, 256
    bank = BasisBank(r=r, d_max=d, D_max=D, basis="very_sparse", seed=0)
    nonzero_columns = int((bank.A_sign != 0).any(dim=0).sum())
    assert nonzero_columns < d  # s = 16 here: about (7/8)^32 = 1.4 % of the columns are zero
    assert torch.linalg.matrix_rank(_random_update(bank, d, D)).item() == nonzero_columns


@pytest.mark.parametrize("basis", BASES)
def test_bases_have_unit_std(basis):
    bank = BasisBank(r=16, d_max=256, D_max=1024, basis=basis, seed=0)
    assert bank.B.std().item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("basis,s_of_D", [("sparse", lambda D: 6.0), ("very_sparse", math.sqrt)])
def test_ternary_bases_follow_the_papers_probabilities(basis, s_of_D):
    D = 1024
    bank = BasisBank(r=16, d_max=256, D_max=D, basis=basis, seed=0)
    s = s_of_D(D)
    signs = bank.B_sign.float()
    assert bank.B_sign.dtype == torch.int8
    assert (signs == 1).float().mean().item() == pytest.approx(1 / s, rel=0.1)
    assert (signs == -1).float().mean().item() == pytest.approx(1 / s, rel=0.1)
    scale = torch.tensor(math.sqrt(s / 2), dtype=torch.float32).item()
    assert set(bank.B.unique().tolist()) == {-scale, 0.0, scale}


def test_same_seed_gives_identical_bases_across_calls_and_dtypes():
    a = BasisBank(r=8, d_max=30, D_max=70, basis="uniform", seed=5)
    b = BasisBank(r=8, d_max=30, D_max=70, basis="uniform", seed=5)
    assert torch.equal(a.A, b.A) and torch.equal(a.B, b.B)
    A16, B16 = a.get("cpu", torch.bfloat16)
    assert torch.equal(A16, a.A.to(torch.bfloat16)) and torch.equal(B16, a.B.to(torch.bfloat16))
    c = BasisBank(r=8, d_max=30, D_max=70, basis="uniform", seed=6)
    assert not torch.equal(a.B, c.B)


def test_same_seed_gives_identical_bases_in_another_process():
    code = (
        "import hashlib; from randlora.bases import BasisBank;"
        "b = BasisBank(r=8, d_max=30, D_max=70, basis='normal', seed=9);"
        "print(hashlib.sha256(b.A.numpy().tobytes() + b.B.numpy().tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == _digest(BasisBank(r=8, d_max=30, D_max=70, basis="normal", seed=9))


def test_device_copies_are_cached_once():
    bank = BasisBank(r=4, d_max=8, D_max=12, basis="uniform", seed=0)
    first = bank.get("cpu", torch.float16)
    assert bank.get("cpu", torch.float16)[1] is first[1]


@pytest.mark.parametrize("D_max", [1, 2, 3, 8])
def test_very_sparse_on_a_tiny_bank_keeps_a_ternary_distribution_with_unit_std(D_max):
    # s = sqrt(D_max) < 2 made P(-1) + P(+1) > 1: the signs overlapped and the std was 0.92 at D_max = 3
    bank = BasisBank(r=4096, d_max=min(D_max, 2), D_max=D_max, basis="very_sparse", seed=0)
    signs = bank.B_sign.float()
    assert bank.B.std().item() == pytest.approx(1.0, abs=0.03)
    assert (signs == 1).float().mean().item() == pytest.approx((signs == -1).float().mean().item(), abs=0.03)
    assert (signs == 0).float().mean().item() >= 0.3  # s >= 3: P(0) = 1 - 2/s >= 1/3


@pytest.mark.parametrize("r,zero_columns", [(1, 591), (2, 382), (8, 36)])
def test_sparse_basis_at_small_r_loses_the_rank_of_every_all_zero_column_of_A(r, zero_columns):
    """The figures the docs cite (seed 0, d = 896), near the expected 896·(2/3)^r; ΔW loses exactly those ranks."""
    d = 896
    bank = BasisBank(r=r, d_max=d, D_max=d, basis="sparse", seed=0)
    zero = int((bank.A_sign == 0).all(dim=0).sum())
    assert zero == zero_columns
    assert zero == pytest.approx(d * (2 / 3) ** r, rel=0.1)
    n = num_bases(d, r)
    gen = torch.Generator().manual_seed(1)
    lam, gam = torch.randn(r, n, generator=gen, dtype=torch.float64), torch.randn(n, d, generator=gen, dtype=torch.float64)
    dw = delta_weight(bank.A.double(), bank.B.double()[:, : n * r], lam, gam, 1.0, d, d)
    assert torch.linalg.matrix_rank(dw).item() == d - zero_columns  # 305 of 896 at r = 1
