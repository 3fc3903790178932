"""The report's scaling view (bench/views/report/scaling.py) on made-up records: tokens/s per GPU against the GPU
count, one row per method, a status where a cell did not finish, and nothing for a model seen on one GPU count."""

from __future__ import annotations

import pandas as pd

from bench.core.fileio import write_json
from bench.records.folder import RunFolder
from bench.views.report import build, data, scaling

from .report_runs import GPUS, METHODS, cell_record

# (method, gpus) -> the cell's tokens/s; the full fine-tuning at 4 GPUs ran out of memory
SPEEDS = {
    ("randlora", 1): 1000.0, ("randlora", 2): 1800.0, ("randlora", 4): 3200.0, ("randlora", 8): 5600.0,
    ("lora", 1): 900.0, ("lora", 2): 1700.0,
    ("full", 2): 600.0, ("full", 8): 2000.0,
}  # fmt: skip


def scaling_run(root) -> RunFolder:
    machine, gpu = GPUS["h200"]
    records = [
        cell_record(machine, gpu, tokens_per_s=speed, model="llama-1.1b", method=METHODS[method], gpus=gpus)
        for (method, gpus), speed in SPEEDS.items()
    ]
    records.append(cell_record(machine, gpu, "oom", model="llama-1.1b", method=METHODS["full"], gpus=4))
    records.append(cell_record(machine, gpu, tokens_per_s=77.0, model="tiny-llama", method=METHODS["lora"]))
    for record in records[:2]:  # records written before the column: the view divides tokens_per_s by the GPUs
        record.train.pop("tokens_per_s_per_gpu", None)
    for record in records[2:]:
        if record.status == "ok":
            record.train["tokens_per_s_per_gpu"] = record.train["tokens_per_s"] / record.cell["gpus"]
    folder = RunFolder(root / "scaling-run")
    for record in records:
        write_json(folder.result_path(record.cell_hash), record)
    return folder


def test_tokens_per_gpu_against_the_gpu_count_for_each_method_at_one_model(tmp_path):
    frame = data.load([scaling_run(tmp_path).root]).frame
    (table,) = scaling.tables(frame)  # tiny-llama ran on one GPU count only: no table
    assert table["title"] == "llama-1.1b on NVIDIA H200: tokens/s per GPU"
    assert table["columns"] == [1, 2, 4, 8]
    rows = {row["label"].split()[0]: row["cells"] for row in table["rows"]}
    assert rows["randlora.eager"] == ["1,000", "900", "800", "700"]
    assert rows["lora"] == ["900", "850", "", ""]
    assert rows["full"] == ["", "300", "oom", "250"]


def test_per_gpu_falls_back_to_tokens_per_s_over_the_gpus():
    frame = pd.DataFrame({"tokens_per_s": [800.0, 900.0], "gpus": [4, 1], "tokens_per_s_per_gpu": [None, 900.0]})
    assert scaling.per_gpu(frame).tolist() == [200.0, 900.0]


def test_the_page_shows_the_scaling_section(tmp_path):
    page = build([scaling_run(tmp_path).root], tmp_path / "report.html").read_text()
    section = page[page.index('<section id="scaling">') :]
    section = section[: section.index("</section>")]
    assert "llama-1.1b on NVIDIA H200: tokens/s per GPU" in section and "<td>oom</td>" in section
    assert "tiny-llama" not in section
