"""bench/grids/h200-perf.yaml holds every comparison issue 7's targets are read from, in one run."""

from __future__ import annotations

from bench.spec import grid as matrix


def _key(cell):
    kw = cell.method.kwargs
    return (cell.model, cell.batch_size, cell.method.name, kw.get("impl"), kw.get("basis"), cell.compile)


def test_the_perf_grid_pairs_every_target_with_its_reference():
    cells = {_key(c): c for c in matrix.load("h200-perf").cells}
    for model, batch in (("llama-1.1b", 8), ("llama-8b", 4)):
        # eager vs eager, compiled vs compiled, our LoRA vs peft's
        assert (model, batch, "peft-lora", None, None, False) in cells
        assert (model, batch, "peft-lora", None, None, True) in cells
        assert (model, batch, "randlora", "eager", "uniform", False) in cells
        assert (model, batch, "randlora", "eager", "uniform", True) in cells
        assert (model, batch, "lora", "eager", None, False) in cells
    for basis in ("sparse", "very_sparse"):  # the sparse impl against the dense one on the same basis
        assert ("llama-1.1b", 8, "randlora", "sparse", basis, False) in cells
        assert ("llama-1.1b", 8, "randlora", "eager", basis, False) in cells
    assert ("llama-1.1b", 8, "randlora", "compiled", "uniform", False) in cells
    for method, impl, base in (("randlora", "eager", "uniform"), ("peft-lora", None, None)):  # batch fit
        batches = sorted(b for (m, b, name, i, basis, comp) in cells if m == "llama-1.1b" and name == method
                         and i == impl and basis == base and not comp)  # fmt: skip
        assert batches == [8, 32, 40, 48, 64]
    every = list(cells.values())
    assert all(c.precision == "bf16" and c.seq_len == 1024 for c in every)
    assert all(len(c.targets) == 7 for c in every if c.method.name != "full")
    assert all(c.method.kwargs.get("r") == (16 if "lora" in c.method.name and "rand" not in c.method.name else 32)
               for c in every if c.method.name != "full")  # fmt: skip


def test_the_perf2_grid_pairs_each_issue_17_target_with_its_reference():
    cells = {
        (c.model, c.method.name, c.method.kwargs.get("impl"), c.method.kwargs.get("basis"),
         c.method.kwargs.get("accumulate"), c.micro_batches, c.compile_scope if c.compile else None): c
        for c in matrix.load("h200-perf2").cells
    }
    best, window = ("randlora", "compiled", "uniform", "micro_batch"), ("randlora", "compiled", "uniform", "window")
    for model in ("llama-1.1b", "llama-8b"):
        assert (model, *best, 1, None) in cells and (model, *window, 4, None) in cells
    for mb in (1, 4):
        assert ("llama-1.1b", "full", "eager", None, None, mb, "blocks") in cells
        assert ("llama-8b", "peft-lora", None, None, None, mb, "blocks") in cells
    for name in ("peft-lora", "peft-lora-liger"):
        assert ("llama-1.1b", name, None, None, None, 1, "blocks") in cells
    assert ("llama-1.1b", "lora", "eager", None, None, 1, "blocks") in cells
    for impl in ("semi_structured", "eager"):  # the 2:4 basis on the sparse tensor cores vs dense, same basis
        assert ("llama-8b", "randlora", impl, "sparse_2_4", "micro_batch", 1, None) in cells
    every = list(cells.values())
    assert len(every) == 14 and all(c.precision == "bf16" and c.seq_len == 1024 for c in every)
    assert all(c.batch_size == (8 if c.model == "llama-1.1b" else 4) for c in every)


def test_the_perf3_grid_pairs_each_randlora_row_with_its_references_at_1_and_4_micro_batches():
    cells = {
        (c.model, c.method.name, c.method.kwargs.get("impl"), c.method.kwargs.get("basis"),
         c.method.kwargs.get("accumulate"), c.method.kwargs.get("keep_weight"), c.micro_batches,
         c.compile_scope if c.compile else None): c
        for c in matrix.load("h200-perf3").cells
    }
    for model, references in (("llama-1.1b", ("full", "lora")), ("llama-8b", ("peft-lora",))):
        assert (model, "randlora", "compiled", "uniform", "micro_batch", False, 1, None) in cells
        assert (model, "randlora", "compiled", "uniform", "window", False, 4, None) in cells
        for name in references:
            for mb in (1, 4):
                assert any(k[0] == model and k[1] == name and k[6] == mb and k[7] == "blocks" for k in cells)
    assert ("llama-1.1b", "randlora", "compiled", "uniform", "micro_batch", True, 1, None) in cells
    for impl in ("semi_structured", "eager"):
        assert ("llama-8b", "randlora", impl, "sparse_2_4", "micro_batch", False, 1, None) in cells
    assert all(c.precision == "bf16" and c.seq_len == 1024 for c in cells.values())
