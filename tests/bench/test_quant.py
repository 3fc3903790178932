"""The `quant` field: a cell's frozen base stored as bitsandbytes int8 / nf4 (run on the CPU here)."""
from __future__ import annotations

import math

import pytest

from bench.spec import grid as matrix
from bench.core.errors import BenchError
from bench.worker.measure import Options, run

from .conftest import grid_from_text, one_cell

pytestmark = pytest.mark.usefixtures("one_thread")
NEEDS_BNB = "bitsandbytes is not installed (pip install 'randlora-bench[quant]')"


def test_quant_none_keeps_the_hash_and_a_quantised_base_gets_its_own_hash_and_label():
    plain, none, nf4 = one_cell(), one_cell(quant="none"), one_cell(quant="nf4")
    assert none.hash == plain.hash and "quant" not in none.identity()
    assert nf4.hash != plain.hash and "quant=nf4" in nf4.label() and "quant" not in plain.label()
    assert nf4.to_dict()["quant"] == "nf4"


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"quant": "nf4", "method": "full"}, "method 'full' trains the base's weights, which a quantised layer cannot"),
        ({"quant": "int8", "gpus": 2}, "quant 'int8' runs on one GPU"),
        ({"quant": "fp8"}, "allowed values are 'none', 'int8', 'nf4'"),
    ],
)
def test_a_quantised_base_that_cannot_work_is_refused_in_one_sentence(fields, message):
    with pytest.raises(BenchError, match=message) as info:
        one_cell(**fields)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


@pytest.fixture(scope="module")
def bnb():
    return pytest.importorskip("bitsandbytes", reason=NEEDS_BNB)


def test_the_block_by_block_build_leaves_nothing_on_meta_and_quantises_every_linear_but_the_output(bnb):
    import torch

    from bench.worker.quantized_build import build_preset

    torch.manual_seed(0)
    model, info = build_preset("tiny-llama", "nf4", torch.float32, torch.device("cpu"))
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    linears = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears.pop("lm_head") == "Linear" and set(linears.values()) == {"Linear4bit"} and len(linears) == 14
    assert model.is_loaded_in_4bit and info.num_layers == 2
    ids = torch.randint(0, info.vocab_size, (2, 9))
    loss = model(input_ids=ids, labels=ids).loss
    assert math.isfinite(loss.item()) and abs(loss.item() - math.log(info.vocab_size)) < 1.0  # random, not broken


METHOD_CASES = [
    ("nf4", {"name": "randlora", "r": 8}),
    ("nf4", {"name": "randlora", "impl": "sparse", "basis": "sparse", "r": 8}),
    ("int8", {"name": "randlora", "r": 8}),
    ("nf4", {"name": "lora", "r": 4}),
    ("int8", {"name": "lora", "r": 4}),
    ("nf4", {"name": "peft-lora", "r": 4}),
    ("nf4", {"name": "peft-randlora", "r": 8}),
    ("int8", {"name": "peft-randlora", "r": 8}),
]


@pytest.mark.parametrize("quant,method", METHOD_CASES, ids=[f"{q}-{m['name']}-{m.get('impl', '')}" for q, m in METHOD_CASES])
def test_every_adapter_method_trains_over_a_quantised_base(bnb, quant, method):
    if method["name"].startswith("peft"):
        pytest.importorskip("peft", reason="peft is not installed (pip install 'randlora-bench[peft]')")
    cell = one_cell(quant=quant, method=method, warmup_steps=1, steps=2, lr=1e-2)
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    train = record["train"]
    assert 0 < train["trainable_params"] < train["total_params"] and math.isfinite(train["loss_last"])
    assert train["flops_per_step"] > 0


def test_the_lm_shift_task_runs_over_an_nf4_base(bnb, tmp_path):
    cell = one_cell(model="byte-llama", task="lm-shift", method={"name": "randlora", "r": 4}, quant="nf4",
                    batch_size=2, seq_len=16, warmup_steps=1, steps=1,
                    task_args={"base": "tiny", "pretrain_steps": 2, "cache_dir": str(tmp_path), "eval_limit": 2})
    record = run(cell, Options())
    assert record["status"] == "ok", record["traceback"]
    assert math.isfinite(record["task_metrics"]["test_loss"])


def test_the_quant_grid_lists_the_8b_and_70b_cells():
    grid = matrix.load("h200-quant")
    by_quant = {}
    for cell in grid.cells:
        by_quant.setdefault((cell.model, cell.quant), set()).add(cell.method.name)
    assert by_quant[("llama-8b", "nf4")] == {"randlora", "peft-lora", "peft-randlora"}
    assert len(grid.cells) == len({c.hash for c in grid.cells}) == 11
    assert by_quant[("llama-8b", "int8")] == {"randlora", "peft-lora", "peft-randlora"}
    assert by_quant[("llama-70b", "nf4")] == {"randlora", "lora"}
    assert ("llama-8b", "none") in by_quant
    assert all(c.batch_size == 1 for c in grid.cells if c.model == "llama-70b")
