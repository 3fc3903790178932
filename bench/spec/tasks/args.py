"""Task arguments (`task_args` in a grid): declared once per task with a default, a check and a one-line reason.

A task's `resolve(values)` hook (bench/spec/tasks/base.py) calls `resolve_args`, which fills the defaults and raises
ValueError with a clause ("task_args.eval_batch_size of task 'trec6' is 0; it must be an integer >= 1.") that the
grid loader prints with the file and line of the cell.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Arg:
    default: Any
    check: Callable[[Any], str | None]  # returns what is wrong ("it must be ..."), or None
    doc: str


def integer(minimum: int) -> Callable[[Any], str | None]:
    def check(value) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        return None if ok else f"it must be an integer >= {minimum}"

    return check


def optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def maybe(value) -> str | None:
        problem = None if value is None else check(value)
        return f"{problem}, or null" if problem else None

    return maybe


def number(minimum: float, maximum: float = math.inf) -> Callable[[Any], str | None]:
    def check(value) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and minimum <= value <= maximum
        return None if ok and math.isfinite(value) else f"it must be a number in [{minimum:g}, {maximum:g}]"

    return check


def text(value) -> str | None:
    return None if isinstance(value, str) and value else "it must be a non-empty string"


def patterns(value) -> str | None:
    ok = isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value)
    return None if ok else "it must be a non-empty list of module names or patterns"


def resolve_args(task: str, spec: dict[str, Arg], given: dict) -> dict:
    """`given` checked against `spec`, every default filled in."""
    unknown = sorted(set(given) - set(spec))
    if unknown:
        allowed = ", ".join(spec) or "none"
        raise ValueError(f"task_args of task {task!r} has no argument {unknown[0]!r}; its arguments are {allowed}.")
    resolved = {name: given.get(name, arg.default) for name, arg in spec.items()}
    for name, value in resolved.items():
        problem = spec[name].check(value)
        if problem:
            raise ValueError(f"task_args.{name} of task {task!r} is {value!r}; {problem}.")
    return resolved


def one_gpu(task: str, values: dict) -> None:
    """The accuracy tasks keep their data and teacher whole on one device: no cells of several GPUs."""
    if values.get("gpus", 1) > 1:
        raise ValueError(f"task {task!r} runs on one GPU; set gpus: 1 (several GPUs: the throughput task).")
