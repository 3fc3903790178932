"""The `quant` field: a cell's frozen base stored as bitsandbytes int8 / nf4 (run on the CPU here)."""
from __future__ import annotations

import gc
import math
import weakref

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
        ({"quant": "nf4", "method": "full"}, "method 'full' trains the base's weights, which a quantised layer"),
        ({"quant": "int8", "gpus": 2}, "quant 'int8' runs on one GPU"),
        ({"quant": "fp8"}, "allowed values are 'none', 'int8', 'nf4'"),
    ],
)
def test_a_quantised_base_that_cannot_work_is_refused_in_one_sentence(fields, message):
    with pytest.raises(BenchError, match=message) as info:
        one_cell(**fields)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


def test_a_cell_without_its_quant_library_is_skipped_with_the_install_line(monkeypatch):
    import importlib.util

    from bench.spec.quant import QUANTS

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert QUANTS["nf4"].unavailable_reason() == (
        "quant 'nf4' needs the 'bitsandbytes' package, which is not installed (pip install 'randlora-bench[quant]')"
    )
    assert QUANTS["none"].unavailable_reason() is None


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


def test_the_build_holds_one_block_in_float_at_a_time(bnb, monkeypatch):
    import torch

    from bench.spec import quant
    from bench.worker import quantized_build

    seen, floats, alive = [], [], []
    original = quant.QUANTS["nf4"]

    def spy(linear):
        model = built["model"]
        float_blocks = {name.split(".")[2] for name, m in model.named_modules()
                        if type(m) is torch.nn.Linear and ".layers." in name and not m.weight.is_meta}  # fmt: skip
        seen.append(len(float_blocks))
        gc.collect()
        alive.append(sum(ref() is not None for ref in floats))  # float weights of layers quantised before this one
        floats.append(weakref.ref(linear.weight))
        return original.quantize(linear)

    built = {}  # the meta model, as the build hands it to quant.quantizable before materialising anything
    monkeypatch.setitem(quant.QUANTS, "nf4", quant.QuantBackend("nf4", "spy", spy, "is_loaded_in_4bit", "bitsandbytes"))
    monkeypatch.setattr(quantized_build.quant, "quantizable", _root_spy(quant.quantizable, built))
    model, _ = quantized_build.build_preset("tiny-llama", "nf4", torch.float32, torch.device("cpu"))
    assert len(seen) == 14 and max(seen) == 1  # 7 projections per block, never two blocks in float at once
    assert max(alive) == 0  # during the build, nothing keeps a quantised layer's float weight alive


def _root_spy(quantizable, built):
    def spy(model, skip):
        built["model"] = model
        return quantizable(model, skip)

    return spy


METHOD_CASES = [
    ("nf4", {"name": "randlora", "r": 8, "precision": "bf16"}),
    ("nf4", {"name": "randlora", "r": 8}),
    ("nf4", {"name": "randlora", "impl": "sparse", "basis": "sparse", "r": 8}),
    ("int8", {"name": "randlora", "r": 8}),
    ("nf4", {"name": "lora", "r": 4}),
    ("int8", {"name": "lora", "r": 4}),
    ("nf4", {"name": "peft-lora", "r": 4}),
    ("nf4", {"name": "peft-randlora", "r": 8}),
    ("int8", {"name": "peft-randlora", "r": 8}),
    ("nf4", {"name": "peft-randlora", "r": 8, "precision": "bf16"}),
]


CASE_IDS = [f"{q}-{'-'.join(map(str, m.values()))}" for q, m in METHOD_CASES]


@pytest.mark.parametrize("quant,method", METHOD_CASES, ids=CASE_IDS)
def test_every_adapter_method_trains_over_a_quantised_base(bnb, quant, method):
    if method["name"].startswith("peft"):
        pytest.importorskip("peft", reason="peft is not installed (pip install 'randlora-bench[peft]')")
    method = dict(method)
    precision = method.pop("precision", "fp32")
    cell = one_cell(quant=quant, method=method, precision=precision, warmup_steps=1, steps=2, lr=1e-2)
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


def test_the_lm_shift_quant_grid_pairs_every_configuration_on_every_base():
    grid = matrix.load("accuracy-h200-lm-quant")
    pairs: dict = {}
    for cell in grid.cells:
        key = (cell.method.label(), cell.seed, cell.lr)
        pairs.setdefault(key, set()).add(cell.quant)
    assert len(grid.cells) == 36 and all(quants == {"none", "int8", "nf4"} for quants in pairs.values())
