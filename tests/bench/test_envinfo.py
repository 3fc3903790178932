"""Where results come from: git state, NVML without a driver, the memory sampler, the progress lines."""

from __future__ import annotations

import io
import sys
import json
import subprocess

from rich.console import Console

from bench.core import envinfo
from bench.worker import memory
from bench.core import nvml
from bench.parent.progress import RunProgress, summary_line
from bench.records.record import Record


def git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_state_reports_the_commit_and_whether_tracked_files_changed(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    assert envinfo.git_state(tmp_path) == {"git_commit": head, "git_dirty": False}
    (tmp_path / "new.py").write_text("")  # untracked files do not make the checkout dirty
    assert envinfo.git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert envinfo.git_state(tmp_path) == {"git_commit": head, "git_dirty": True}


def test_git_state_outside_a_checkout_is_null(tmp_path):
    assert envinfo.git_state(tmp_path) == {"git_commit": None, "git_dirty": None}


def test_without_nvml_there_are_no_gpus_and_nothing_raises(monkeypatch):
    monkeypatch.setattr(nvml, "pynvml", None)
    nvml._init.cache_clear()
    try:
        assert (nvml.gpus(), nvml.describe("GPU-x"), nvml.processes("GPU-x")) == ([], {}, [])
        assert nvml.process_memory_bytes("GPU-x", 1) is None and nvml.used_bytes("GPU-x") is None
    finally:
        nvml._init.cache_clear()


def test_capture_records_versions_host_and_git():
    env = envinfo.capture()
    assert env["torch_version"] and env["transformers_version"] and env["cpu_count"] >= 1
    assert set(env) >= {"git_commit", "git_dirty", "gpu_count", "gpus", "cpu_name", "host_memory_bytes"}


_SAMPLER_SCRIPT = """
import json, time
from bench.worker import memory
with memory.Sampler(gpu_uuid=None, interval_s=0.01) as sampler:
    before = sampler.host_rss_peak_bytes
    block = bytearray(256 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    time.sleep(0.3)  # hold it across several sampling intervals
print(json.dumps({"before": before, **sampler.read()}))
"""


def test_the_sampler_sees_host_memory_grow():
    # a fresh process: a long-lived test process's RSS history makes the growth of one block hard to see
    out = subprocess.run([sys.executable, "-c", _SAMPLER_SCRIPT], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["host_rss_peak_bytes"] >= result["before"] + 200 * 2**20
    assert result["nvml_peak_bytes"] is None and result["nvml_device_peak_bytes"] is None


def test_progress_prints_one_line_per_cell_and_counts_failures():
    out = io.StringIO()
    with RunProgress(3, Console(file=out, width=200)) as progress:
        for label, record in [
            (
                "a",
                {
                    "status": "ok",
                    "label": "a",
                    "train": {"tokens_per_s": 12345.6},
                    "memory": {"peak_allocated_bytes": 2**31},
                },
            ),
            ("b", {"status": "timeout", "label": "b", "reason": "no result after 6 s"}),
            ("c", {"status": "skipped", "label": "c", "reason": "peft missing"}),
        ]:
            progress.started(label)
            progress.finished(label, Record.from_dict({"cell_hash": label, "cell": {}, **record}))
        assert progress._counts == {"ok": 1, "failed": 1, "skipped": 1}
    text = out.getvalue()
    assert "ok       a  12,346 tokens/s  peak 2.00 GiB" in text and "timeout  b  no result after 6 s" in text


def test_summary_line_of_a_cpu_cell_has_no_peak_and_shows_the_counted_memory():
    record = Record("h", "x", {}, status="ok", train={"tokens_per_s": 5.0})
    assert summary_line(record) == "ok       x  5 tokens/s"
    record.memory = {"param_bytes": 2**30, "grad_bytes": 2**30, "optimizer_bytes": 2**30, "activation_bytes": 2**30}
    assert summary_line(record) == "ok       x  5 tokens/s  counted 4.00 GiB"


def test_summary_line_says_when_a_cell_is_not_the_compiled_speed():
    record = Record("h", "x", {}, status="ok", train={"tokens_per_s": 5.0, "graph_breaks": 0, "recompiles_measured": 0})
    assert summary_line(record) == "ok       x  5 tokens/s"
    record.train.update(graph_breaks=36, recompiles_measured=2)
    assert summary_line(record) == ("ok       x  5 tokens/s  (36 graph breaks, 2 recompiles while timed: not the "
                                    "compiled speed)")


def test_the_source_digest_names_the_code_and_changes_with_it(tmp_path):
    for package in envinfo.SOURCE_PACKAGES:
        (tmp_path / package / "__pycache__").mkdir(parents=True)
        (tmp_path / package / "a.py").write_text("x = 1\n")
        (tmp_path / package / "__pycache__" / "a.cpython.py").write_text("ignored")
    first = envinfo.source_digest(tmp_path)
    (tmp_path / "bench" / "__pycache__" / "a.cpython.py").write_text("changed, still ignored")
    assert envinfo.source_digest(tmp_path) == first and len(first) == 64
    (tmp_path / "bench" / "a.py").write_text("x = 2\n")
    assert envinfo.source_digest(tmp_path) != first
    assert envinfo.source_digest(tmp_path / "empty") is None
