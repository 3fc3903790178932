"""`hf:` models of any causal-LM family: targets checked on a meta-device copy at grid load (so at --dry-run), the
family's default targets, and a GPT-2 (transformers' Conv1D layers) run end to end through `bench run`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import cli
from bench.core.errors import BenchError
from bench.spec import modelcheck, presets

from .conftest import one_cell


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory) -> Path:
    """A tiny GPT-2 written by save_pretrained: odd widths, Conv1D projections, token ids within its vocabulary."""
    import transformers

    config = transformers.GPT2Config(
        vocab_size=96, n_positions=32, n_embd=24, n_layer=2, n_head=3, n_inner=52, bos_token_id=0, eos_token_id=0
    )
    folder = tmp_path_factory.mktemp("models") / "gpt2-tiny"
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def _grid(tmp_path: Path, model: str, body: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(
        f"name: hf\ndefaults: {{model: 'hf:{model}', batch_size: 2, seq_len: 16, warmup_steps: 1, steps: 2, "
        f"timeout_s: 300}}\n{body}"
    )
    return path


def _dry_run(capsys, grid: Path, tmp_path: Path) -> tuple[int, str, str]:
    code = cli.main(["run", "--matrix", str(grid), "--dry-run", "--run-dir", str(tmp_path / "run")])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_gpt2_cell_gets_the_gpt2_family_targets_by_default(gpt2_folder):
    cell = one_cell(model=f"hf:{gpt2_folder}", method="lora")
    assert cell.targets == ("c_attn", "c_proj", "c_fc")


def test_an_hf_model_of_a_family_without_defaults_gets_all_linear(tmp_path):
    import transformers

    config = transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    transformers.GPTNeoXForCausalLM(config).save_pretrained(tmp_path / "neox")
    cell = one_cell(model=f"hf:{tmp_path / 'neox'}", method="lora")
    assert cell.targets == ("all-linear",)
    modelcheck.check([cell], "grid.yaml")  # and all-linear selects something there


def test_targets_matching_no_module_are_refused_at_dry_run_with_one_sentence(capsys, gpt2_folder, tmp_path):
    grid = _grid(tmp_path, gpt2_folder, "axes: {method: [lora], targets: [[q_proj, v_proj, c_fc]]}\n")
    code, out, err = _dry_run(capsys, grid, tmp_path)
    assert code == 2 and "dry run" not in out and not (tmp_path / "run").exists()
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {grid}: targets 'q_proj', 'v_proj' match no module of model 'hf:{gpt2_folder}'")
    assert "(a GPT2LMHeadModel), whose linear layers are named c_attn, c_fc, c_proj" in line
    assert "'c_fc'" not in line and "Traceback" not in err


def test_a_hub_id_out_of_reach_offline_is_one_sentence_at_dry_run(capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    modelcheck._read_config.cache_clear()
    grid = _grid(tmp_path, "no-such-owner-h14/no-such-model", "include: [{method: lora}]\n")
    code, out, err = _dry_run(capsys, grid, tmp_path)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    model = "'hf:no-such-owner-h14/no-such-model'"
    assert f"model {model} has no readable transformers config (HF_HUB_OFFLINE is set" in line
    assert line.endswith("give a local folder written by save_pretrained, or a hub id that is cached or reachable.")


def test_the_meta_build_is_made_once_per_model(gpt2_folder, monkeypatch):
    modelcheck.meta_model.cache_clear()
    cells = [one_cell(model=f"hf:{gpt2_folder}", method=m, seed=s) for m in ("lora", "randlora") for s in (0, 1)]
    modelcheck.check(cells, "grid.yaml")
    assert modelcheck.meta_model.cache_info().misses == 1


def test_trust_remote_code_reaches_the_config_only_when_the_grid_asks(gpt2_folder, monkeypatch):
    import transformers

    seen = []
    real = transformers.AutoConfig.from_pretrained

    def spy(path, **kwargs):
        seen.append(kwargs["trust_remote_code"])
        return real(path, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    modelcheck._read_config.cache_clear()
    one_cell(model=f"hf:{gpt2_folder}", trust_remote_code=False)
    one_cell(model=f"hf:{gpt2_folder}", trust_remote_code=True)
    assert seen == [False, True]


@pytest.mark.slow
def test_a_gpt2_from_a_folder_runs_end_to_end_for_randlora_lora_and_peft_lora(
    gpt2_folder, tmp_path, capsys, cells_in_this_process
):
    """Through `bench run`, the cells measured in this process (a process per cell is test_runner.py's)."""
    pytest.importorskip("peft")
    grid = _grid(
        tmp_path,
        gpt2_folder,
        "axes:\n  method: [{name: randlora, r: 4, alpha: 64}, {name: lora, r: 4, alpha: 8},"
        " {name: peft-lora, r: 4, alpha: 8}]\n",
    )
    run_dir = tmp_path / "run"
    code = cli.main(["run", "--matrix", str(grid), "--run-dir", str(run_dir)])
    captured = capsys.readouterr()
    assert code == 0, captured.out + captured.err
    records = [json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json")]
    assert sorted(r["cell"]["method"]["name"] for r in records) == ["lora", "peft-lora", "randlora"]
    for record in records:
        assert record["status"] == "ok", record.get("reason")
        assert record["cell"]["targets"] == ["c_attn", "c_proj", "c_fc"]
        assert record["train"]["trainable_params"] > 0 and record["train"]["warmup_steps_run"] >= 1


def test_a_config_that_cannot_be_read_is_asked_for_once(monkeypatch, tmp_path):
    """Each try at an unreachable hub waits through huggingface_hub's retries: resolve and check share one."""
    import transformers

    calls = []

    def unreachable(path, **kwargs):
        calls.append(path)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    modelcheck._read_config.cache_clear()
    cell = one_cell(model="hf:someone/unreachable-h14", method="lora")
    with pytest.raises(BenchError, match=r"^grid.yaml: model 'hf:someone/unreachable-h14' has no readable"):
        modelcheck.check([cell], "grid.yaml")
    assert calls == ["someone/unreachable-h14"]


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_s_default_modules_select_modules_of_its_model(name):
    """Grid load skips the meta build for a preset at its defaults; this is what makes that safe."""
    targets, trainable = presets.default_modules(name)
    modelcheck.check_cell_modules(name, False, tuple(targets), tuple(trainable))  # raises if one selects nothing
