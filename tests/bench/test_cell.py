"""A cell measured in this process (no spawn): what it records, and each status it can end in."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from bench.worker import measure as cellmod
from bench.worker.measure import Options, run

from .conftest import one_cell

LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def randlora_ok() -> dict:
    return run(one_cell(method={"name": "randlora", "r": 8}, steps=4), Options())


def test_an_ok_cell_reports_throughput_from_its_own_step_times(randlora_ok):
    assert randlora_ok["status"] == "ok" and randlora_ok["traceback"] is None
    train = randlora_ok["train"]
    kept = len(train["step_times_s"])  # leading steps still warming up leave the statistics (at most half)
    assert 2 <= kept <= 4 and kept + train["warmup_steps_run"] == 4 + 1 and train["tokens_per_step"] == 2 * 16
    assert train["tokens_per_s"] == pytest.approx(32 * len(train["step_times_s"]) / sum(train["step_times_s"]))
    assert train["samples_per_s"] == pytest.approx(2 * len(train["step_times_s"]) / sum(train["step_times_s"]))
    assert train["step_time_p10_s"] <= train["step_time_median_s"] <= train["step_time_p90_s"]
    assert train["first_step_s"] > 0 and train["recompiles_measured"] == 0


def test_on_a_cpu_allocator_peaks_and_mfu_are_null_not_zero(randlora_ok):
    assert randlora_ok["device"]["device"] == "cpu"
    assert randlora_ok["memory"]["peak_allocated_bytes"] is None and randlora_ok["train"]["mfu"] is None
    assert randlora_ok["memory"]["nvml_peak_bytes"] is None
    assert randlora_ok["memory"]["host_rss_peak_bytes"] > 50 * 2**20


def test_the_memory_breakdown_counts_tensors(randlora_ok):
    memory, train = randlora_ok["memory"], randlora_ok["train"]
    assert memory["param_bytes"] == 4 * train["total_params"]  # fp32: every parameter, frozen or not
    assert memory["grad_bytes"] == 4 * train["trainable_params"]  # only the trainables get gradients
    # AdamW: exp_avg and exp_avg_sq per trainable, plus a scalar step per parameter tensor
    assert 8 * train["trainable_params"] <= memory["optimizer_bytes"] <= 8 * train["trainable_params"] + 4 * 100
    assert memory["activation_bytes"] > 0


def test_saved_activations_grow_with_the_batch():
    small = run(one_cell(method="lora", batch_size=1), Options())["memory"]["activation_bytes"]
    large = run(one_cell(method="lora", batch_size=4), Options())["memory"]["activation_bytes"]
    assert large > 3 * small


def per_layer_shapes():
    """(in, out) of tiny-llama's seven projections (hidden 64, ffn 176, 4 heads, 2 kv heads of 16)."""
    return [(64, 64), (64, 32), (64, 32), (64, 64), (64, 176), (64, 176), (176, 64)]


def test_trainable_counts_of_each_method_follow_their_formulas():
    layers = 2
    lora = run(one_cell(method={"name": "lora", "r": 4}), Options())["train"]
    assert lora["trainable_params"] == layers * sum(4 * (i + o) for i, o in per_layer_shapes())
    full = run(one_cell(method="full"), Options())["train"]
    assert full["trainable_params"] == full["total_params"]
    randlora = run(one_cell(method={"name": "randlora", "r": 8}), Options())["train"]
    n_r_d = [(-(-min(i, o) // 8), min(i, o)) for i, o in per_layer_shapes()]
    assert randlora["trainable_params"] == layers * sum(n * (8 + d) for n, d in n_r_d)


def test_peft_methods_adapt_the_same_modules_with_the_same_counts():
    for ours, theirs in (
        (("lora", {"r": 4, "alpha": 8}), ("peft-lora", {"r": 4, "alpha": 8})),
        (("randlora", {"r": 8}), ("peft-randlora", {"r": 8})),
    ):
        a = run(one_cell(method={"name": ours[0], **ours[1]}), Options())
        b = run(one_cell(method={"name": theirs[0], **theirs[1]}), Options())
        assert a["status"] == b["status"] == "ok", (a["reason"], b["reason"])
        assert a["train"]["trainable_params"] == b["train"]["trainable_params"]


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16-amp", "bf16-amp"])
def test_every_precision_trains(precision):
    result = run(one_cell(method={"name": "randlora", "r": 8}, precision=precision), Options())
    assert result["status"] == "ok", result["reason"]
    base_bytes = 2 if precision == "bf16" else 4
    frozen = result["train"]["total_params"] - result["train"]["trainable_params"]
    assert result["memory"]["param_bytes"] == base_bytes * frozen + 4 * result["train"]["trainable_params"]


@pytest.mark.parametrize("model", ["tiny-bert", "tiny-vit"])
@pytest.mark.parametrize("method", ["lora", "randlora"])
def test_encoders_train_their_classification_head_with_every_adapter(model, method):
    result = run(one_cell(model=model, method=method), Options())
    assert result["status"] == "ok", result["reason"]
    head = {"tiny-bert": 64 * 2 + 2, "tiny-vit": 64 * 10 + 10}[model]
    assert result["train"]["trainable_params"] > head


def test_an_hf_model_loads_from_a_local_folder(tmp_path):
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=128,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    result = run(one_cell(model=f"hf:{tmp_path / 'tiny'}", method="lora"), Options())
    assert result["status"] == "ok", result["reason"]
    assert result["train"]["trainable_params"] == 16 * (4 * (32 + 32) - 2 * 16 + 2 * (32 + 64) + (64 + 32))


def test_an_injected_oom_is_reported_as_oom_with_its_traceback():
    result = run(one_cell(inject="oom"), Options())
    assert result["status"] == "oom"
    assert result["reason"] == "OutOfMemoryError: injected by the grid (inject: oom)"
    assert "OutOfMemoryError" in result["traceback"]


def test_an_exception_is_reported_as_error_with_its_traceback():
    result = run(one_cell(inject="error"), Options())
    assert result["status"] == "error"
    assert result["reason"] == "RuntimeError: injected by the grid (inject: error)"
    assert "_inject" in result["traceback"]
    assert result["train"]["trainable_params"] > 0  # what was known before the failure is kept


def test_a_nan_loss_is_reported_as_diverged_with_the_step():
    result = run(one_cell(inject="nan", warmup_steps=2), Options())
    assert result["status"] == "diverged"
    assert result["reason"] == "the loss is nan at warm-up step 1 of 2"


def test_a_runtime_out_of_memory_message_counts_as_oom(monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("CUDA error: out of memory\nmore lines")

    monkeypatch.setattr(cellmod, "_measure", fail)
    result = run(one_cell(), Options())
    assert (result["status"], result["reason"]) == ("oom", "RuntimeError: CUDA error: out of memory")


def test_a_hang_blocks_until_killed():
    worker = threading.Thread(target=cellmod._inject, args=("hang", torch.zeros(())), daemon=True)
    worker.start()
    worker.join(0.5)
    assert worker.is_alive()


def test_a_cuda_cell_without_cuda_is_skipped():
    result = run(one_cell(device="cuda"), Options())
    assert result["status"] == "skipped"
    assert result["reason"] == "the cell asks for device 'cuda' and this process sees no CUDA device"


def test_profiling_writes_a_tensorboard_and_a_chrome_trace(tmp_path):
    result = run(one_cell(method="lora"), Options(profile_dir=str(tmp_path)))
    assert result["status"] == "ok", result["reason"]
    (tensorboard,) = (tmp_path / "tensorboard").glob("*.pt.trace.json")
    for path in (tensorboard, tmp_path / "trace.json"):
        assert json.loads(path.read_text())["traceEvents"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "self_cpu_time_total" in summary.splitlines()[0]
    assert "aten::mm" in summary  # the operator table lists the adapter's matmuls


def test_a_measured_ceiling_gives_a_second_mfu():
    train = run(one_cell(method="lora"), Options(measure_ceiling=True))["train"]
    assert train["matmul_ceiling_flops"] > 1e8
    kept = len(train["step_times_s"])  # the measured steps the statistics keep (warm-up that leaked in is dropped)
    expected = train["flops_per_step"] * kept / train["measured_time_s"] / train["matmul_ceiling_flops"]
    assert train["mfu_vs_ceiling"] == pytest.approx(expected)


@pytest.mark.parametrize("method", ["lora", "randlora", "peft-lora", "full"])
def test_head_lr_puts_exactly_the_trainable_modules_in_a_group_of_their_own(method):
    from bench.spec.precision import PRECISIONS
    from bench.spec.tasks import TASKS

    cell = one_cell(model="tiny-bert", method=method, lr=1e-4, head_lr=3e-3)
    assert cell.trainable_modules and "head_lr=0.003" in cell.label()
    setup = cellmod._set_up(cell, torch.device("cpu"), PRECISIONS[cell.precision], TASKS[cell.task], {})
    groups = {g["lr"]: sum(p.numel() for p in g["params"]) for g in setup.optimizer.param_groups}
    trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
    head = 64 * 2 + 2  # tiny-bert's classifier: hidden 64, two labels
    assert groups[3e-3] == head and groups[1e-4] == trainable - head


def test_without_head_lr_one_group_trains_everything_and_the_hash_is_unchanged():
    from bench.spec.precision import PRECISIONS
    from bench.spec.tasks import TASKS

    cell = one_cell(model="tiny-bert", method="lora")
    assert "head_lr" not in cell.identity()
    setup = cellmod._set_up(cell, torch.device("cpu"), PRECISIONS[cell.precision], TASKS[cell.task], {})
    assert len(setup.optimizer.param_groups) == 1


def test_compile_blocks_compiles_each_repeated_block_once_and_nothing_nested(monkeypatch):
    from torch import nn

    from bench.spec import presets

    compiled: list[nn.Module] = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    model, _ = presets.build("tiny-llama", torch.float32, "cpu")
    assert cellmod.COMPILERS["blocks"](model) is model
    layers = list(model.model.layers)
    assert len(layers) >= 2 and compiled == layers


def test_compile_blocks_without_repeated_blocks_is_one_sentence():
    from torch import nn

    from bench.core.errors import BenchError

    with pytest.raises(BenchError, match="finds no repeated blocks .* in Sequential; use compile_scope: model"):
        cellmod.COMPILERS["blocks"](nn.Sequential(nn.Linear(2, 2)))


def test_compile_scope_is_in_the_label_and_the_default_keeps_the_hash():
    cell = one_cell(compile=True, compile_scope="blocks")
    assert cell.label().endswith("compile=blocks") and cell.identity()["compile_scope"] == "blocks"
    assert "compile_scope" not in one_cell(compile=True).identity()


class _CountingTask:
    """The task with its loss calls counted."""

    def __init__(self, task) -> None:
        self.task, self.losses = task, 0

    def __getattr__(self, name):
        return getattr(self.task, name)

    def loss(self, model, batch):
        self.losses += 1
        return self.task.loss(model, batch)


@pytest.mark.parametrize("method", [{"name": "randlora", "r": 8, "accumulate": "window"}, "lora"])
def test_micro_batches_run_that_many_backwards_per_optimizer_step(method):
    from bench.spec.precision import PRECISIONS
    from bench.spec.tasks import TASKS

    cell = one_cell(method=method, micro_batches=3)
    task = _CountingTask(TASKS[cell.task])
    setup = cellmod._set_up(cell, torch.device("cpu"), PRECISIONS[cell.precision], task, {})
    optimizer_steps = []
    step = setup.optimizer.step
    setup.optimizer.step = lambda *a, **k: optimizer_steps.append(1) or step(*a, **k)
    for i in range(2):
        assert torch.isfinite(setup.step(i))
    assert (task.losses, len(optimizer_steps)) == (6, 2)


def test_micro_batches_count_every_token_and_stay_out_of_the_hash_at_one():
    result = run(one_cell(method={"name": "randlora", "r": 8, "accumulate": "window"}, micro_batches=2, steps=2),
                 Options())
    assert result["status"] == "ok", result["traceback"]
    train = result["train"]
    assert train["tokens_per_step"] == 2 * 2 * 16
    assert train["tokens_per_s"] == pytest.approx(64 * len(train["step_times_s"]) / sum(train["step_times_s"]))
    assert "micro_batches" not in one_cell().identity() and "accumulate" not in one_cell().identity()["method"]
    assert one_cell(micro_batches=2).identity()["micro_batches"] == 2
    assert "b2x16x2mb" in one_cell(micro_batches=2).label().split()


def test_peft_lora_liger_is_skipped_on_a_cpu_and_names_its_packages():
    from bench.spec.methods import METHODS

    method = METHODS["peft-lora-liger"]
    assert method.needs_cuda and method.resolve({}) == {"r": 16, "alpha": 32, "dropout": 0.0}
    result = run(one_cell(method="peft-lora-liger", device="cpu"), Options())
    assert result["status"] == "skipped" and "runs CUDA kernels only" in result["reason"]
    reason = method.unavailable_reason()
    assert reason is None or "liger_kernel" in reason or "peft" in reason


def test_a_compiled_cell_counts_its_graph_breaks(monkeypatch):
    """graph_breaks is 0 when each compiled block is one graph (every adapter impl traces whole), and counts a break
    that splits one: the column that would have shown compiled RandLoRA breaking every block on torch 2.11."""
    from randlora.layers import base

    ok = run(one_cell(method={"name": "randlora", "impl": "compiled", "r": 4}, steps=2), Options())
    assert ok["status"] == "ok" and ok["train"]["graph_breaks"] == 0 and ok["train"]["recompile_limit_hits"] == 0
    compute_dtype = base.compute_dtype

    def breaking(x):
        torch._dynamo.graph_break()
        return compute_dtype(x)

    monkeypatch.setattr(base, "compute_dtype", breaking)
    monkeypatch.setattr("randlora.layers.randlora_eager.compute_dtype", breaking)
    monkeypatch.setattr("randlora.layers.lora.compute_dtype", breaking)
    torch._dynamo.reset()
    broken = run(one_cell(method={"name": "lora", "r": 4}, compile=True, compile_scope="blocks", steps=2), Options())
    assert broken["status"] == "ok" and broken["train"]["graph_breaks"] > 0


def test_a_compiled_cell_counts_the_times_dynamo_gave_up_recompiling(monkeypatch):
    """Dynamo runs code eagerly once it reaches its recompile limit, with no error and no counter: the cell counts
    the warning. tiny-llama's first block gets an input without grad and the second one with it: two graphs of one
    code object, one more than a limit of 1 allows."""
    from bench.parent.progress import _compile_warnings

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    result = run(one_cell(method={"name": "lora", "r": 4}, compile=True, compile_scope="blocks", steps=2), Options())
    torch._dynamo.reset()
    assert result["status"] == "ok" and result["train"]["recompile_limit_hits"] > 0
    assert "recompile limit hit" in _compile_warnings(result["train"])
