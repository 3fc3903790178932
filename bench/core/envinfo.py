"""Where a result came from: the machine, the GPUs, the package versions, the git commit.

Captured by the parent without importing torch.cuda (NVML for GPUs, package metadata for versions); the cell's
own process adds what only torch can say (its CUDA build, the device it ran on).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import psutil

from bench.core import nvml

PACKAGES = ("torch", "transformers", "peft", "randlora-bench")
REPO_ROOT = Path(__file__).resolve().parent.parent


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(root: Path = REPO_ROOT) -> dict:
    """{'git_commit', 'git_dirty'}: HEAD and whether tracked files differ from it; None, None outside a git checkout."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": None, "git_dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


SOURCE_PACKAGES = ("randlora", "bench")  # the code a result depends on, digested in source_sha256


def source_digest(root: Path = REPO_ROOT) -> str | None:
    """sha256 over the paths and bytes of every .py file of the two packages, in path order: names the code that
    ran even where git cannot (a copy of the tree without .git, or one under a stale checkout). Recompute it for a
    commit with `git worktree add` and this function."""
    files = sorted(
        p for package in SOURCE_PACKAGES for p in (root / package).rglob("*.py") if "__pycache__" not in p.parts
    )
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def capture() -> dict:
    """The run's environment: host, software, git, and every GPU NVML sees (the run's GPUs are chosen later)."""
    gpus = nvml.gpus()
    return {
        "hostname": platform.node(),
        "os": platform.platform(),
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "cpu_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "host_memory_bytes": psutil.virtual_memory().total,
        **{f"{name.replace('-', '_')}_version": package_version(name) for name in PACKAGES},
        **git_state(),
        "source_sha256": source_digest(),
        "gpu_count": len(gpus),
        "gpus": [nvml.describe(gpu.uuid) for gpu in gpus],
    }
