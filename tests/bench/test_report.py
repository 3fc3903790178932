"""`bench report`: one offline HTML file, every section, ratios, unfinished cells kept, every result string escaped.
(The rendering in a real browser is tests/bench/test_report_browser.py.)"""

from __future__ import annotations

import re
import sys
import types

import pandas as pd
import pytest

from bench.core.fileio import read_json, write_json
from bench.records.folder import RunFolder
from bench.records.record import STATUSES, Record
from bench import cli
from bench.views.report import bundle
from bench.views.report import data
from bench.views.report import tables
from bench.views.report import build

from .report_runs import HOSTILE_MODEL, HOSTILE_REASON, HOSTILE_TRACEBACK, write_runs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return write_runs(root)


@pytest.fixture(scope="module")
def page(runs_dir, tmp_path_factory) -> str:
    out = build(runs_dir, tmp_path_factory.mktemp("report") / "report.html", title="Test <report>")
    return out.read_text(encoding="utf-8")


def test_the_page_is_one_file_that_needs_no_network(page):
    assert page.count(bundle.gzipped_base64()[:200]) == 1  # plotly.js inlined once for every chart
    assert not re.search(r"<(script|img|iframe)[^>]*\bsrc=|<link\b|@import|url\(https?:", page)


def test_every_string_from_a_result_is_escaped(page):
    for hostile in (HOSTILE_MODEL, HOSTILE_REASON, HOSTILE_TRACEBACK, "Test <report>"):
        assert hostile not in page
    assert "hf:&lt;img src=x onerror=&#34;window.__xss=1&#34;&gt;" in page  # in the tables, as text
    assert "&lt;/td&gt;&lt;script&gt;window.__xss=2&lt;/script&gt;" in page
    assert "&lt;/pre&gt;&lt;script&gt;window.__xss=3&lt;/script&gt;" in page
    charts = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.DOTALL)
    assert charts and all("<" not in c and ">" not in c for c in charts)  # no string can close the element
    assert any("hf:\\u0026lt;img" in c for c in charts)  # escaped again for plotly, which renders some HTML


def test_the_sections_are_all_there(page):
    for heading in (
        "Summary",
        "Accuracy",
        "NVIDIA A100-SXM4-80GB",
        "NVIDIA H200",
        "Cells that did not finish",
        "Environment",
    ):
        assert f">{heading}</" in page, heading
    for title in ("tokens/s", "peak memory", "test accuracy"):
        assert f"<h3>{title}</h3>" in page
        assert f"<summary>{title}, ratio to LoRA</summary>" in page
        assert f"<summary>{title}, ratio to full fine-tuning</summary>" in page
    for chart in ("throughput", "memory", "acc-params", "acc-memory", "steps"):
        assert f'id="gpu-nvidia-h200-{chart}"' in page, chart
    assert 'id="gpu-nvidia-a100-sxm4-80gb-acc-params"' not in page  # no accuracy on the A100: no empty chart
    for text in ("gpu-box-1", "gpu-box-2", "NVIDIA H200", "abc123", "12.8", "-m bench run --matrix h200-run.yaml"):
        assert text in page, text


def test_cells_that_did_not_finish_show_their_status_and_reason_in_the_tables(page):
    assert re.search(r'<td class="status-oom" title="oom: made up for the test">OOM</td>', page)
    assert re.search(r'<td class="status-skipped" title="skipped: made up for the test">SKIPPED</td>', page)
    assert page.count('<span class="badge error">error</span>') == 1
    assert "<details><summary>traceback</summary><pre>Traceback (most recent call last):" in page


def test_ratios_compare_with_lora_and_full_of_the_same_setting(runs_dir):
    runs = data.load(runs_dir)
    frame = runs.frame
    vs_lora, method = data.ratio_to(frame, "tokens_per_s", data.LORA_METHODS)
    vs_full, _ = data.ratio_to(frame, "tokens_per_s", ("full",))
    row = frame.index[
        (frame["gpu_type"] == "NVIDIA H200") & (frame["config"] == "randlora.eager r=32") & (frame["model"] == "tiny-llama")
        & (frame["batch_size"] == 2) & (frame["variant"] == "lr=0.001")
    ]  # fmt: skip
    assert method == "lora" and vs_lora[row].tolist() == [1.5] and vs_full[row].tolist() == [1.2]
    a100 = frame.index[(frame["gpu_type"] != "NVIDIA H200") & (frame["config"] == "randlora.eager r=32")]
    assert vs_lora[a100].tolist() == [600 / 400]


def test_runs_that_differ_only_in_a_setting_stay_apart_in_the_pivots(runs_dir):
    frame = data.load(runs_dir).frame
    h200 = frame[frame["gpu_type"] == "NVIDIA H200"]
    assert set(h200["variant"]) == {"lr=0.0001", "lr=0.001"}
    assert set(frame.loc[frame["gpu_type"] != "NVIDIA H200", "variant"]) == {""}
    plain = tables.pivots(h200)[0][0]
    assert plain.row_names == ["configuration", "precision", "variant"]
    labels = [tuple(label) for label, _ in plain.rows]
    assert ("lora r=16", "fp32", "lr=0.0001") in labels and ("lora r=16", "fp32", "lr=0.001") in labels
    assert plain.columns[0] == ("tiny-llama", ["1×64", "2×64"])  # models by size, then batch × sequence


def test_the_summary_names_the_best_configuration_per_goal(runs_dir):
    best = {(b["gpu_type"], b["model"], b["goal"]): b for b in tables.summary(data.load(runs_dir))}
    fast = best[("NVIDIA H200", "tiny-llama", "speed")]
    assert fast["config"].startswith("randlora.eager r=32, fp32, batch 2×64") and fast["vs_lora"] == "1.50×"
    small = best[("NVIDIA A100-SXM4-80GB", "tiny-llama", "memory")]
    assert (
        small["config"].startswith("randlora.eager r=32") and small["value"] == "1 GiB" and small["vs_full"] == "0.33×"
    )


def test_the_summary_leaves_out_cells_that_shared_their_gpu(runs_dir, tmp_path):
    """A run of cells packed 16 to a GPU (an accuracy sweep) reports tokens/s that are not a lone cell's: however
    high, they never become the summary's fastest configuration."""
    from .report_runs import GPUS, METHODS, cell_record

    machine, gpu = GPUS["h200"]
    packed = RunFolder(tmp_path / "packed-run")
    record = cell_record(machine, gpu, tokens_per_s=10**9, model="tiny-llama", method=METHODS["lora"], batch_size=1,
                         lr=3e-2)  # fmt: skip
    record.run = {**record.run, "cells_per_gpu": 16}
    write_json(packed.result_path(record.cell_hash), record)
    best = {(b["gpu_type"], b["model"], b["goal"]): b for b in tables.summary(data.load([*runs_dir, packed.root]))}
    fast = best[("NVIDIA H200", "tiny-llama", "speed")]
    assert fast["config"].startswith("randlora.eager r=32, fp32, batch 2×64")


def test_accuracy_is_summarised_by_the_accuracy_protocol(page):
    """bench/views/accuracy.py picks the lr on validation (0.001: 0.86 > 0.81), then reports test at it."""
    assert "From bench/views/accuracy.py" in page
    row = re.search(r"<tr><td class=\"text\">throughput</td><td class=\"text\">tiny-llama</td>"
                    r"<td class=\"text\">randlora.eager</td>(.*?)</tr>", page)  # fmt: skip
    cells = re.findall(r"<td class=\"text\">(.*?)</td>", row.group(1))
    assert cells == ["randlora.eager r=32 fp32", "fp32", "1×64", "4,600", "–", "0.001 (end of sweep)", "1",
                     "91.0 %", "test_accuracy", "90.0 %", "yes", "0"]  # one seed: no ±


def test_an_accuracy_summary_is_shown_as_it_comes_with_every_string_escaped(runs_dir, tmp_path, monkeypatch):
    import pandas as pd

    fake = types.ModuleType("bench.views.accuracy")
    fake.summarize = lambda frame: pd.DataFrame({"task": ["<trec6>"], "method": ["lora"], "test": ["85.0 ± 0.1"]})
    monkeypatch.setitem(sys.modules, "bench.views.accuracy", fake)
    page = build(runs_dir, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "From bench/views/accuracy.py" in page and "&lt;trec6&gt;" in page and "85.0 ± 0.1" in page


def test_the_pareto_front_keeps_the_points_nothing_beats():
    xs, ys = [1, 2, 2, 3, 4, 5], [0.5, 0.7, 0.6, 0.7, 0.9, 0.8]
    assert data.pareto_front(xs, ys) == [0, 1, 4]


@pytest.mark.parametrize(("value", "text"), [(512, "512 B"), (3 * 2**20, "3 MiB"), (23.94 * 2**30, "23.9 GiB")])
def test_bytes_read_in_binary_units(value, text):
    assert tables.fmt_bytes(value) == text


def test_the_command_line_writes_the_report_and_refuses_a_folder_without_results(runs_dir, tmp_path, capsys):
    out = tmp_path / "sub" / "r.html"
    assert cli.main(["report", *map(str, runs_dir), "-o", str(out)]) == 0
    assert 500_000 < out.stat().st_size <= 1_500_000  # plotly.js inlined (gzipped): one file, under the budget
    assert cli.main(["report", str(tmp_path), "-o", str(out)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_cells_that_shared_a_gpu_are_flagged_at_the_top_and_a_lone_run_is_not(page, tmp_path):
    from bench.records import table as results

    from .report_runs import GPUS, METHODS, cell_record

    assert "sharing one GPU" not in page
    machine, gpu = GPUS["h200"]
    folder = RunFolder(tmp_path / "shared-run")
    for seed in range(3):
        record = cell_record(machine, gpu, model="tiny-llama", method=METHODS["lora"], seed=seed)
        record.run["cells_per_gpu"] = 4
        write_json(folder.result_path(record.cell_hash), record)
    write_json(folder.root / "run.json", {"argv": [], "env": {**record.env, "gpus": [record.env["gpu"]]}})
    shared = build([folder.root], tmp_path / "r.html").read_text(encoding="utf-8")
    assert re.search(r"3 cells ran with up to 4 cells sharing one GPU", shared)


def test_the_verdict_comes_first_and_states_ratios_to_named_baselines(page):
    assert page.index('id="verdict"') < page.index('id="summary"') < page.index("best for")
    sentence = re.search(r'<p class="sentence">(.*?)</p>', page, re.DOTALL).group(1)
    # RandLoRA at 1200 tokens/s and 1.5 GiB per unit of batch, full fine-tuning at 1000 and 4 GiB
    assert "RandLoRA (randlora.eager r=32) runs at ×1.20 the tokens/s of full fine-tuning" in sentence
    assert "×0.38 its peak memory" in sentence


def test_verdict_ratios_are_medians_with_the_range_of_the_extremes_and_a_range_over_one_is_a_tie():
    import pandas as pd

    from bench.views.report import verdict

    faster = verdict.ratio(pd.Series([110.0, 120.0, 130.0]), pd.Series([100.0, 101.0]))
    assert (round(faster.median, 3), round(faster.low, 3), round(faster.high, 3)) == (1.194, 1.089, 1.3)
    assert not faster.tie and faster.text() == "×1.19 (1.09–1.30)"
    noisy = verdict.ratio(pd.Series([0.85, 0.90]), pd.Series([0.80, 0.85]))  # accuracy over two seeds
    assert noisy.tie and noisy.text().endswith(" tie")
    assert verdict.ratio(pd.Series([1.0]), pd.Series([], dtype=float)) is None


def test_the_verdict_names_peft_lora_and_full_fine_tuning_eager_and_compiled_where_measured(runs_dir, tmp_path):
    from bench.views.report import verdict

    from .report_runs import GPUS, cell_record

    machine, gpu = GPUS["h200"]
    extra = RunFolder(tmp_path / "peft-run")
    for compiled, speed in ((False, 600.0), (True, 900.0)):
        peft = {"name": "peft-lora", "r": 16, "alpha": 32}
        record = cell_record(machine, gpu, tokens_per_s=speed, peak=3 * 2**30, model="tiny-llama", method=peft,
                             batch_size=1, lr=1e-4, compile=compiled)  # fmt: skip
        write_json(extra.result_path(record.cell_hash), record)
    found = verdict.groups(data.load([*runs_dir, extra.root]).frame)
    (group,) = [g for g in found if g["key"]["model"] == "tiny-llama" and g["key"]["gpu_type"] == "NVIDIA H200"
                and g["key"]["batch_size"] == 1]  # fmt: skip
    assert group["baselines"] == ["our LoRA eager", "peft LoRA eager", "peft LoRA compiled", "full fine-tuning eager"]
    sentence = verdict.sentence(found)
    assert "×2.00 the tokens/s of peft LoRA" in sentence and "of full fine-tuning" in sentence


def test_the_verdict_of_an_accuracy_study_uses_the_chosen_rate_and_no_shared_speed():
    """Cells that shared a GPU compare on accuracy only, and only at each configuration's rate chosen on
    validation: a bad rate of the sweep never enters the ratio."""
    from bench.views.report import verdict

    rows = []
    for method, config, good, bad in (
        ("randlora", "randlora.eager r=6", 0.9, 0.1), ("lora", "lora r=8", 0.6, 0.5), ("full", "full", 1.0, 0.2)
    ):
        for lr, score in ((1e-3, good), (1e-1, bad)):
            for seed in (0, 1):
                rows.append({"status": "ok", "tokens_per_s": 100.0, "memory_bytes": 10, "compile": False,
                             "compile_scope": "model", "method": method, "impl": "eager", "config": config,
                             "gpu_type": "G", "model": "m", "batch_size": 8, "seq_len": 16, "precision": "bf16",
                             "cells_per_gpu": 8, "task": "t", "lr": lr, "seed": seed, "val_accuracy": score,
                             "test_accuracy": score})
    (group,) = verdict.groups(pd.DataFrame(rows))
    (row,) = group["rows"]
    parts = row["ratios"][("lora", "eager")]
    assert set(parts) == {"accuracy"}  # no tokens/s or memory for cells that shared a GPU
    assert parts["accuracy"].median == pytest.approx(0.9 / 0.6)
    said = verdict.sentence([group])
    assert "reaches ×0.90 the accuracy of full fine-tuning" in said and "accuracy only" in said


def test_the_verdict_compares_only_cells_on_the_same_base_and_micro_batches():
    """RandLoRA over nf4 is set against peft LoRA over nf4, never against peft LoRA on a bf16 base; a frame from
    before `quant` and `micro_batches` were recorded reads as a float base at one micro-batch."""
    from bench.views.report import verdict

    def cell(method, quant, micro, speed):
        return {"status": "ok", "tokens_per_s": speed, "memory_bytes": 10, "compile": False, "compile_scope": "model",
                "method": method, "impl": "eager", "config": method, "gpu_type": "G", "model": "m", "batch_size": 4,
                "seq_len": 16, "precision": "bf16", "cells_per_gpu": 1, "task": "throughput", "quant": quant,
                "micro_batches": micro}

    frame = pd.DataFrame([cell("randlora", "nf4", 1, 80.0), cell("peft-lora", "nf4", 1, 100.0),
                          cell("randlora", "none", 1, 90.0), cell("peft-lora", "none", 1, 300.0),
                          cell("randlora", "none", 4, 95.0), cell("peft-lora", "none", 4, 95.0)])  # fmt: skip
    found = {g["title"]: g["rows"][0]["ratios"][("peft-lora", "eager")]["tokens/s"].median
             for g in verdict.groups(frame)}  # fmt: skip
    assert found == {"G · m · b4×16 · bf16": pytest.approx(0.3), "G · m · b4×16 · bf16 · nf4 base": pytest.approx(0.8),
                     "G · m · b4×16 · bf16 · 4 micro-batches": pytest.approx(1.0)}  # fmt: skip
    old = frame[frame["quant"] == "none"].drop(columns=["quant", "micro_batches"]).iloc[:2]
    assert [g["title"] for g in verdict.groups(old)] == ["G · m · b4×16 · bf16"]


def test_variants_name_only_the_task_arguments_that_differ_within_a_task_and_the_page_lists_them_all(tmp_path):
    import hashlib

    from .report_runs import GPUS, METHODS, cell_record

    machine, gpu = GPUS["h200"]
    folder = RunFolder(tmp_path / "probe-run")
    layers = ["q_proj", "v_proj"]
    cases = [("probe", {"delta_rank": rank, "eval_samples": 512, "layers": layers}) for rank in (4, 16, None)]
    cases.append(("shift", {"cache_dir": ".carry/lm", "eval_limit": None}))
    for task, args in cases:
        record = cell_record(machine, gpu, model="tiny-llama", method=METHODS["lora"], accuracy=0.5)
        record.cell.update(task=task, task_args=args)
        record.cell_hash = hashlib.sha256(repr((task, args)).encode()).hexdigest()
        write_json(folder.result_path(record.cell_hash), record)
    runs = data.load([folder.root])
    assert sorted(runs.frame["variant"]) == [
        "task=probe delta_rank=16", "task=probe delta_rank=4", "task=probe delta_rank=null", "task=shift"
    ]  # fmt: skip
    assert {t["task"]: (t["same"], t["differ"]) for t in tables.tasks(runs)} == {
        "probe": ('eval_samples=512, layers=["q_proj", "v_proj"]', "delta_rank ∈ {4, 16, null}"),
        "shift": ("cache_dir=.carry/lm, eval_limit=null", ""),
    }
    page = build([folder.root], tmp_path / "r.html").read_text(encoding="utf-8")
    assert "task_args=" not in page and page.count("eval_samples=512") == 1  # every argument, once


def test_a_run_whose_cells_shared_a_gpu_has_no_speed_or_memory_pivot_and_says_so(tmp_path):
    from .report_runs import GPUS, METHODS, cell_record

    machine, gpu = GPUS["h200"]
    folders = []
    for name, cells_per_gpu in (("shared-run", 4), ("lone-run", 1)):
        folder = RunFolder(tmp_path / name)
        for seed in range(2):
            record = cell_record(machine, gpu, model="tiny-llama", method=METHODS["lora"], seed=seed, accuracy=0.5)
            record.run["cells_per_gpu"] = cells_per_gpu
            write_json(folder.result_path(record.cell_hash), record)
        folders.append(folder.root)
    shared = build(folders[:1], tmp_path / "shared.html").read_text(encoding="utf-8")
    assert "<h3>tokens/s</h3>" not in shared and "<h3>peak memory</h3>" not in shared
    assert "<h3>test accuracy</h3>" in shared  # accuracy still compares
    assert "No tokens/s or peak memory tables for the 2 cells from shared-run" in shared
    frame = data.load(folders).frame
    speed, memory, accuracy = (plain for plain, _, _ in tables.pivots(frame))
    assert {label[2].split()[0] for label, _ in speed.rows} == {"run=lone-run"}  # the lone run's cells only
    assert {label[2].split()[0] for label, _ in accuracy.rows} == {"run=lone-run", "run=shared-run"}


def test_page_weight_sizes_each_section_table_and_script_with_its_children_under_it():
    from bench.tools.page_weight import weigh

    table = '<table id="t"><tr><td>1</td></tr></table>'
    page = f'<section id="s"><p>x</p>{table}</section>\n<script id="j">{{"a": 1}}</script>'
    assert weigh(page) == [(1, "table", "t", len(table)), (0, "section", "s", len(page.split("\n")[0])),
                           (0, "script", "j", len('<script id="j">{"a": 1}</script>'))]  # fmt: skip
