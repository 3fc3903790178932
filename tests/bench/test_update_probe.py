"""The real-update probe (`update-probe`): its target is what fine-tuning changed, its inputs are the layers' real
inputs, its loss is 1 for doing nothing and 0 for the exact update, and its ceilings are the right ones. Tiny base,
a few steps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bench.spec.tasks import TASKS, lm_base, lm_update, update_probe
from bench.spec.tasks.probe import _layer_gap, learned_change
from bench.worker.measure import Options, run

from .conftest import one_cell

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = {"base": "tiny", "pretrain_steps": 2, "ft_steps": 3, "ft_batch_size": 2, "train_windows": 4, "eval_windows": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("lm-cache"))


def _cell(cache: str, method, **fields):
    return one_cell(model="byte-llama", task="update-probe", method=method, lr=1e-2, batch_size=2, seq_len=16,
                    task_args={**ARGS, "cache_dir": cache}, **fields)


def test_the_target_is_the_fine_tuned_weights_minus_the_base(cache):
    base = lm_base.ensure_pretrained(cache, "tiny", 0, 2, "cpu")
    folder = lm_update.ensure_update(base, ("q_proj", "down_proj"), 3, 1e-2, 2, 0, "cpu")
    again = lm_update.ensure_update(base, ("q_proj", "down_proj"), 3, 1e-2, 2, 0, "cpu")
    assert folder == again and folder.name.startswith(base.name + "-ft-")
    changes, record = lm_update.load_update(folder, "cpu")
    assert sorted(changes) == sorted(n for n in changes if n.endswith(("q_proj", "down_proj"))) and len(changes) == 4
    assert all(c.abs().max() > 0 for c in changes.values())  # every projection moved
    assert record["steps"] == 3 and math.isfinite(record["scores"]["after"]["test"]["loss"])
    assert lm_update.folder_for(base, ("q_proj",), 3, 1e-2, 2, 0) != folder  # another recipe, another folder
    spectrum = record["spectra"]["model.layers.0.self_attn.q_proj"]
    assert 1 <= spectrum["stable_rank"] <= spectrum["effective_rank"] + 1e-6 <= spectrum["rank_cap"] + 1e-6


def test_spectrum_summary_reads_a_rank_one_change_as_rank_one():
    u, v = torch.randn(12, 1), torch.randn(1, 9)
    summary = lm_update.spectrum_summary(u @ v)
    assert summary["stable_rank"] == pytest.approx(1.0, abs=1e-5) and summary["top8_energy"] == pytest.approx(1.0)
    flat = lm_update.spectrum_summary(torch.eye(8))
    assert flat["effective_rank"] == pytest.approx(8.0, rel=1e-5) and flat["stable_rank"] == pytest.approx(8.0)


def test_the_loss_is_one_for_nothing_and_zero_for_the_exact_update(cache):
    cell = _cell(cache, "full")
    model, info = TASKS["update-probe"].build_model(cell, torch.device("cpu"), torch.float32)
    probe = info.data
    assert len(probe.layers) == 2 * 7  # the tiny base's 2 layers x every projection
    assert _layer_gap(model, probe, 32, 5).item() == pytest.approx(1.0)  # the base: nothing recovered
    with torch.no_grad():
        for name, (_, change) in probe.layers.items():
            model.get_submodule(name).weight.add_(change)
    assert _layer_gap(model, probe, 32, 5).item() == pytest.approx(0.0, abs=1e-6)
    assert _layer_gap(model, probe, 32, 5, "test").item() == pytest.approx(0.0, abs=1e-6)
    module = model.get_submodule(next(iter(probe.layers)))
    w0, change = next(iter(probe.layers.values()))
    assert torch.allclose(learned_change(module, w0), change, atol=1e-6)


def test_real_inputs_are_the_layers_own_inputs(cache):
    cell = _cell(cache, {"name": "lora", "r": 1, "alpha": 2})
    model, info = TASKS["update-probe"].build_model(cell, torch.device("cpu"), torch.float32)
    probe = info.data
    first = next(iter(probe.layers))
    test_rows = probe.inputs(0, "test", 0, 0)
    assert test_rows.shape == (ARGS["eval_windows"] * 16, model.config.hidden_size)
    # the same windows, read again through the model: the captured rows are the layer's real input
    windows = torch.as_tensor(lm_update.corpus.film_reviews().test.astype("int64"))[: 2 * 16].view(2, 16)
    (again,) = update_probe.capture_inputs(model, (first,), windows)
    assert torch.allclose(again.reshape(-1, again.shape[-1]), test_rows)
    assert not torch.allclose(test_rows.std(0), torch.ones(test_rows.shape[1]), atol=0.05)  # not N(0, I)
    step_a, step_b = probe.inputs(0, "train", 32, 1), probe.inputs(0, "train", 32, 2)
    assert step_a.shape == (32, test_rows.shape[1]) and not torch.equal(step_a, step_b)
    assert torch.equal(probe.inputs(0, "train", 32, 1), step_a)  # a step asked twice gets the same rows
    assert 0 < probe.top_r_energy < 1  # LoRA's ceiling at r = 1, in the output metric


def test_output_ceiling_is_one_at_full_rank_and_exact_for_a_rank_one_change():
    x = [torch.randn(50, 6)]
    change = torch.randn(5, 6)
    assert update_probe.output_ceiling([change], x, 5) == pytest.approx(1.0)
    assert update_probe.output_ceiling([torch.randn(5, 1) @ torch.randn(1, 6)], x, 1) == pytest.approx(1.0)
    assert update_probe.output_ceiling([change], x, 1) < 1.0


@pytest.mark.parametrize("method", [{"name": "lora", "r": 2, "alpha": 4}, {"name": "randlora", "r": 4, "alpha": 16}])
def test_a_cell_runs_through_the_harness_and_reports_p_over_n(cache, method):
    cell = _cell(cache, method, steps=4)
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    metrics = record["task_metrics"]
    assert 0 < metrics["p_over_n"] < 1
    if method["name"] == "lora":  # LoRA r2 over every projection of the tiny base: r (in + out) / (in * out)
        model, _ = TASKS["update-probe"].build_model(cell, torch.device("cpu"), torch.float32)
        shapes = [model.get_submodule(n).weight.shape for n in _names(model)]
        expected = sum(2 * (o + i) for o, i in shapes) / sum(o * i for o, i in shapes)
        assert metrics["p_over_n"] == pytest.approx(expected)
    for split in ("val", "test"):
        assert -1 < metrics[f"{split}_output_recovered"] <= 1
    assert metrics["target_folder"].startswith("byte-llama-tiny-")
    json.dumps(metrics)  # a results row


def _names(model):
    return [n for n, m in model.named_modules() if n.endswith(("_proj",)) and isinstance(m, torch.nn.Linear)]


def test_bad_arguments_are_refused_before_anything_runs(cache):
    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match="eval_windows"):
        one_cell(model="byte-llama", task="update-probe", method="full", task_args={**ARGS, "eval_windows": 0})
    with pytest.raises(BenchError, match="update-probe"):
        one_cell(model="tiny-llama", task="update-probe", method="full", task_args=ARGS)
