"""The harness's layers import downwards only, and the library never imports the harness (ARCHITECTURE.md).

The contracts live in pyproject.toml ([tool.importlinter]); import-linter checks them from the code's own imports,
so a new upward import or a cycle between layers fails this test with the import that broke it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_every_import_contract_is_kept():
    pytest.importorskip("importlinter")
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_broken_contract_is_reported(tmp_path):
    """The check can fail: a copy of the config with the layers upside down is broken."""
    pytest.importorskip("importlinter")
    text = (REPO / "pyproject.toml").read_text()
    start = text.index("\n[tool.importlinter]\n") + 1
    config = text[start:].replace('"bench.cli",\n    "bench.views | bench.tools",', '"bench.core",\n    "bench.views | bench.tools",', 1)
    config = config.replace('    "bench.spec",\n    "bench.core",\n]', '    "bench.spec",\n    "bench.cli",\n]', 1)
    (tmp_path / ".importlinter.toml").write_text(config)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
         f"sys.argv = ['lint-imports', {str(tmp_path / '.importlinter.toml')!r}]; sys.exit(lint_imports_command())"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0 and "BROKEN" in done.stdout
