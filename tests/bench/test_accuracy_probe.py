"""The full-rank probe: the teacher's change has the requested rank, spectrum and size; the loss starts at 1; LoRA
never recovers more than the top-r part of a flat change, and RandLoRA, at the same count, recovers more."""

from __future__ import annotations

import pytest
import torch

from bench.spec.tasks import probe
from bench.worker.measure import Options, run

from .conftest import one_cell


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("shape", "rank", "decay"), [((48, 80), None, 0.0), ((80, 48), 7, 1.0), ((33, 33), 12, 0.5)])
def test_the_teacher_change_has_the_requested_rank_spectrum_and_norm(shape, rank, decay):
    generator = torch.Generator().manual_seed(0)
    change = probe.teacher_change(*shape, rank, decay, norm=3.0, generator=generator, device="cpu")
    assert change.shape == shape
    k = min(rank or min(shape), *shape)
    values = torch.linalg.svdvals(change.double())
    assert torch.linalg.matrix_rank(change.double(), rtol=1e-5).item() == k  # above float32 rounding
    expected = (torch.arange(k, dtype=torch.float64) + 1) ** (-decay)
    expected *= 3.0 / expected.norm()
    torch.testing.assert_close(values[:k], expected, rtol=1e-4, atol=1e-5)
    assert change.norm().item() == pytest.approx(3.0, rel=1e-5)


def test_the_teacher_change_is_reproducible_from_its_seed():
    a = probe.teacher_change(20, 30, None, 0.0, 1.0, torch.Generator().manual_seed(3), "cpu")
    b = probe.teacher_change(20, 30, None, 0.0, 1.0, torch.Generator().manual_seed(3), "cpu")
    c = probe.teacher_change(20, 30, None, 0.0, 1.0, torch.Generator().manual_seed(4), "cpu")
    assert torch.equal(a, b) and not torch.equal(a, c)


def _probe_cell(method, **fields):
    defaults = {"model": "tiny-llama", "task": "full-rank-probe", "targets": ["q_proj", "o_proj"], "batch_size": 8,
                "seq_len": 32, "warmup_steps": 1, "steps": 60, "lr": 3e-3}
    return one_cell(method=method, **{**defaults, **fields})


def test_the_probe_loss_starts_at_one_and_a_few_steps_beat_the_untrained_student():
    cell = _probe_cell({"name": "lora", "r": 4, "alpha": 8}, steps=1)
    model, info = probe.build_model(cell, torch.device("cpu"), torch.float32)
    assert probe.evaluate(model, info, "cpu", 0)["delta_recovered"] == pytest.approx(0.0)
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    trained = run(_probe_cell({"name": "lora", "r": 4, "alpha": 8}, steps=20), Options())["task_metrics"]
    assert trained["test_output_recovered"] > 0.02 and trained["delta_recovered"] > 0.02


def test_lora_stays_under_its_top_r_ceiling_and_randlora_at_a_similar_count_recovers_more():
    lora = run(_probe_cell({"name": "lora", "r": 4, "alpha": 8}), Options())
    randlora = run(_probe_cell({"name": "randlora", "r": 8, "alpha": 160}, lr=1e-3), Options())
    assert lora["status"] == randlora["status"] == "ok"
    # 4 layers of 64 x 64 (q) and 64 x 64 (o): LoRA r=4 trains 2048, RandLoRA r=8 trains 2304 parameters
    assert lora["train"]["trainable_params"] == 2048 and randlora["train"]["trainable_params"] == 2304
    ceiling = lora["task_metrics"]["top_r_energy"]
    assert ceiling == pytest.approx(4 / 64, rel=1e-4)  # a flat, full-rank change: r / d
    assert lora["task_metrics"]["delta_recovered"] <= ceiling + 1e-3
    assert randlora["task_metrics"]["delta_recovered"] > 2 * lora["task_metrics"]["delta_recovered"]
    # held-out agreement with the teacher tracks the weights in layers mode
    for record in (lora, randlora):
        m = record["task_metrics"]
        assert m["test_output_recovered"] == pytest.approx(m["delta_recovered"], abs=0.03)


def test_full_fine_tuning_recovers_the_change_and_model_mode_reports_agreement():
    full = run(_probe_cell("full", steps=60), Options())["task_metrics"]
    assert full["delta_recovered"] > 0.9
    model_mode = run(_probe_cell("full", steps=4, task_args={"match": "model", "train_batches": 2,
                                                             "eval_samples": 8, "eval_batch_size": 4}), Options())
    assert model_mode["status"] == "ok", model_mode["traceback"]
    assert 0.0 <= model_mode["task_metrics"]["test_accuracy"] <= 1.0


def test_the_probe_layers_default_to_the_cell_targets_and_survive_full_fine_tuning():
    cell = one_cell(model="tiny-llama", task="full-rank-probe", method="full")
    assert cell.targets == () and cell.task_kwargs["layers"] == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                                   "up_proj", "down_proj")
    assert cell.trainable_modules == ()


@pytest.mark.parametrize(
    "method",
    [{"name": "peft-lora", "r": 4, "alpha": 8}, {"name": "peft-randlora", "r": 8, "alpha": 32},
     {"name": "randlora", "impl": "sparse", "basis": "sparse", "r": 8, "alpha": 32}],
)  # fmt: skip
def test_every_method_s_change_is_read_back_the_same_way(method):
    # peft's RandLora layer subclasses nn.Linear and holds its bias inside: ΔŴ must still come from the adapter
    record = run(_probe_cell(method, steps=20, model="tiny-bert", targets=["query", "value"]), Options())
    assert record["status"] == "ok", record["traceback"]
    metrics = record["task_metrics"]
    assert metrics["delta_recovered"] > 0.02
    assert metrics["test_output_recovered"] == pytest.approx(metrics["delta_recovered"], abs=0.03)
