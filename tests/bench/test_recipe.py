"""One training recipe for every method: a rate schedule with warm-up, gradient clipping, the basis seed, and the
update rank each row records."""

from __future__ import annotations

import math

import pytest

from bench.core.errors import BenchError
from bench.worker.measure import Options, lr_factor, run

from .conftest import grid_from_text, one_cell


def test_the_schedules_warm_up_linearly_then_hold_or_decay_to_zero():
    cosine, linear, constant = (lr_factor(s, 0.2, 10) for s in ("cosine", "linear", "constant"))
    assert [round(cosine(i), 4) for i in range(2)] == [round(1 / 3, 4), round(2 / 3, 4)]  # warm-up: 2 of 10 steps
    assert cosine(2) == linear(2) == constant(2) == 1.0
    assert cosine(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert linear(6) == pytest.approx(0.5) and constant(9) == 1.0
    assert cosine(10) == pytest.approx(0.0, abs=1e-12) and linear(10) == 0.0


@pytest.mark.parametrize(
    "field, value", [("lr_schedule", "step"), ("lr_warmup_ratio", 0.9), ("grad_clip", -1), ("basis_seed", 7)]
)
def test_a_bad_recipe_field_is_one_sentence_naming_it(field, value):
    with pytest.raises(BenchError, match=field):
        grid_from_text(f"defaults: {{{field}: {value!r}}}\ninclude: [{{}}]")


def test_basis_seed_cell_is_refused_for_a_method_without_random_bases():
    with pytest.raises(BenchError, match="basis_seed"):
        one_cell(method="lora", basis_seed="cell")


def test_recipe_fields_at_their_defaults_keep_a_cell_s_hash():
    assert one_cell(method="lora").hash == one_cell(method="lora", lr_schedule="constant", grad_clip=None).hash
    assert one_cell(method="lora").hash != one_cell(method="lora", lr_schedule="cosine").hash


def _trained(**fields) -> dict:
    out = run(one_cell(warmup_steps=1, steps=3, **fields), Options())
    assert out["status"] == "ok", out["reason"]
    return out


def test_the_basis_seed_follows_the_cell_s_seed_only_when_asked():
    method = {"name": "randlora", "r": 8}
    fixed = [_trained(method=method, seed=s, lr=1e-2)["train"]["loss_last"] for s in (1, 1)]
    assert fixed[0] == fixed[1]  # the same cell gives the same result
    own = _trained(method=method, seed=1, lr=1e-2, basis_seed="cell")["train"]["loss_last"]
    assert own != fixed[0]  # other bases (seed 1, not 0), so another trajectory


def test_every_row_records_the_rank_its_update_can_reach():
    d = 64  # tiny-llama's hidden size: the smaller side of every targeted projection
    ranks = {
        "lora": _trained(method={"name": "lora", "r": 4})["train"]["update_rank"],
        "randlora": _trained(method={"name": "randlora", "r": 8})["train"]["update_rank"],
        "randlora-2-bases": _trained(method={"name": "randlora", "r": 8, "n_bases": 2})["train"]["update_rank"],
        "full": _trained(method="full")["train"]["update_rank"],
        "peft-lora": _trained(method={"name": "peft-lora", "r": 4})["train"]["update_rank"],
    }
    assert ranks == {"lora": 4, "randlora": d, "randlora-2-bases": 16, "full": d, "peft-lora": 4}


def test_clipping_changes_the_step_only_when_the_norm_exceeds_it():
    loose = _trained(method="full", lr=1e-2, grad_clip=1e9)["train"]["loss_last"]
    free = _trained(method="full", lr=1e-2)["train"]["loss_last"]
    tight = _trained(method="full", lr=1e-2, grad_clip=1e-4)["train"]["loss_last"]
    assert loose == pytest.approx(free, rel=1e-6) and tight != pytest.approx(free, rel=1e-6)


def test_vera_trains_its_scaling_vectors_and_records_a_rank_of_at_most_r():
    """peft's VeRA through the harness: per layer d (r) and b (out) train, so the count is Σ (r + out)."""
    out = _trained(method={"name": "peft-vera", "r": 16}, targets=["q_proj", "v_proj"])
    # tiny-llama: 2 blocks × (q_proj 64 → 64, v_proj 64 → 32: two key-value heads of 16)
    assert out["train"]["trainable_params"] == 2 * ((16 + 64) + (16 + 32))
    assert out["train"]["update_rank"] == 16
