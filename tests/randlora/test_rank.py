"""n_bases and the update's rank: ΔW reaches rank min(d, n·r) with n·(r + d) trainables per layer."""
from __future__ import annotations

import pytest
import torch

import randlora
from randlora.functional import delta_weight

from .helpers import TARGETS, TinyMLP


def _random_delta(layer) -> torch.Tensor:
    """ΔW of `layer` in float64 with random λ, γ (not the zero init), from the layer's own bases."""
    gen = torch.Generator().manual_seed(0)
    lam = torch.randn(layer.randlora_lambda.shape, generator=gen, dtype=torch.float64)
    gam = torch.randn(layer.randlora_gamma.shape, generator=gen, dtype=torch.float64)
    A, B = layer.bases("cpu", torch.float64)
    return delta_weight(A, B, lam, gam, 1.0, layer.in_features, layer.out_features)


@pytest.mark.parametrize("in_f,out_f", [(40, 64), (64, 40)])
@pytest.mark.parametrize("basis", ["uniform", "normal"])
@pytest.mark.parametrize("r,n_bases", [(4, 3), (8, 3), (16, 3), (4, None), (7, 2)])
def test_update_rank_is_min_of_d_and_n_times_r(in_f, out_f, basis, r, n_bases):
    model = torch.nn.Sequential(torch.nn.Linear(in_f, out_f))
    config = randlora.RandLoRAConfig(r=r, basis=basis, n_bases=n_bases, target_modules=["0"])
    randlora.adapt(model, config)
    n = -(-40 // r) if n_bases is None else min(n_bases, -(-40 // r))
    expected = min(40, n * r)  # 12, 24, 40 (48 capped by d), 40, 14
    assert randlora.update_rank(config, out_f, in_f) == expected
    assert torch.linalg.matrix_rank(_random_delta(model[0])).item() == expected


def test_trainable_count_is_n_times_r_plus_d_per_layer():
    config = randlora.RandLoRAConfig(r=5, n_bases=6, target_modules=TARGETS)
    model = randlora.adapt(TinyMLP(), config)
    # d = 19, 41, 23: ceil(d / 5) = 4, 9, 5, capped at 6 -> 4, 6, 5
    assert randlora.count_trainable(model) == 4 * (5 + 19) + 6 * (5 + 41) + 5 * (5 + 23)


def test_equal_n_bases_keeps_the_budget_while_r_raises_the_rank():
    d, D = 768, 3072
    counts, ranks = {}, {}
    for r in (8, 64, 128):
        config = randlora.RandLoRAConfig(r=r, n_bases=6, target_modules=["0"])
        model = randlora.adapt(torch.nn.Sequential(torch.nn.Linear(d, D)), config)
        counts[r], ranks[r] = randlora.count_trainable(model), randlora.update_rank_of(model)
    assert ranks == {8: 48, 64: 384, 128: 768}  # the paper's Table 2 ranks at d = 768
    assert counts == {8: 4656, 64: 4992, 128: 5376}  # within 16 %


def test_update_rank_of_lora_and_full_fine_tuning():
    assert randlora.update_rank(randlora.LoRAConfig(r=8), 41, 19) == 8
    assert randlora.update_rank(randlora.LoRAConfig(r=32), 41, 19) == 19
    assert randlora.update_rank(randlora.FullFinetuneConfig(), 41, 19) == 19
    model = randlora.adapt(TinyMLP(), randlora.LoRAConfig(r=3, target_modules=TARGETS))
    assert randlora.update_ranks(model) == {"up": 3, "mid": 3, "down": 3}
    full = randlora.adapt(TinyMLP(), randlora.FullFinetuneConfig())
    assert randlora.update_rank_of(full) == 41 and randlora.update_ranks(full)["head"] == 3


def test_update_rank_of_a_model_is_the_largest_over_its_layers():
    model = randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(r=5, n_bases=3, target_modules=TARGETS))
    assert randlora.update_ranks(model) == {"up": 15, "mid": 15, "down": 15}
    model = randlora.adapt(TinyMLP(), randlora.RandLoRAConfig(r=5, target_modules=TARGETS))
    assert randlora.update_rank_of(model) == 41


def test_n_bases_for_budget_fits_the_budget():
    assert randlora.n_bases_for_budget(5376, 128, 3072, 768) == 6
    assert randlora.n_bases_for_budget(5375, 128, 3072, 768) == 5
    assert randlora.n_bases_for_budget(10**9, 128, 3072, 768) == 6  # never more than ceil(d / r)
    with pytest.raises(randlora.ConfigError, match="trainable_per_layer is 0"):
        randlora.n_bases_for_budget(0, 8, 64, 64)
