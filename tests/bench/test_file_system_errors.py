"""File-system trouble is one sentence and exit 2, never a traceback, and leaves no temporary file behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from bench import cli
from bench.core import fileio


def _grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text("name: fs\ndefaults: {model: tiny-llama, method: lora, steps: 1, warmup_steps: 1}\ninclude: [{}]\n")
    return path


def test_a_run_dir_that_is_a_regular_file_is_one_sentence(tmp_path, capsys):
    target = tmp_path / "not-a-folder"
    target.write_text("x")
    assert cli.main(["run", "--matrix", str(_grid(tmp_path)), "--run-dir", str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(target) in err[0] and "Traceback" not in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the ENOSPC test covers the path")
def test_a_read_only_run_folder_is_one_sentence(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert cli.main(["run", "--matrix", str(_grid(tmp_path)), "--run-dir", str(folder / "run")]) == 2
    finally:
        folder.chmod(0o700)
    assert capsys.readouterr().err.startswith("error: cannot use")


def test_a_full_disk_is_one_sentence_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    real = fileio.replace_atomically

    def no_space(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    def failing(path, write):  # every atomic write fails as on a full disk, after its temporary file exists
        return real(path, no_space)

    monkeypatch.setattr(fileio, "replace_atomically", failing)
    monkeypatch.setattr("bench.parent.runner.write_text", lambda path, text: failing(path, None))
    run_dir = tmp_path / "run"
    assert cli.main(["run", "--matrix", str(_grid(tmp_path)), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot use") and "free some space" in err and err.count("\n") == 1
    assert not [p for p in run_dir.rglob(".*.tmp")]


def test_replace_atomically_removes_its_temporary_file_when_the_write_fails(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(OSError):
        fileio.replace_atomically(target, lambda tmp: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_written_atomically_get_the_mode_the_umask_gives_a_plain_open(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        fileio.write_json(tmp_path / "cells" / "abc.json", {"status": "ok"})
        fileio.write_text(tmp_path / "results.csv", "a,b\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "cells" / "abc.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "results.csv").stat().st_mode & 0o777 == mode
