"""A grid file -> the list of cells it defines, every value checked before anything runs.

    name: default                # names the run folder (runs/<name>) unless --run-dir says otherwise
    description: ...
    defaults: {precision: bf16, steps: 8}       # one value per field, over the fields' own defaults
    axes:                                       # the Cartesian product of these lists
      model: [tiny-llama]
      method: [full, {name: randlora, impl: compiled, r: 8}]
      batch_size: [1, 2, 4]
    exclude:                                    # drop product cells matching every key (a list means any of)
      - {method: full, precision: fp16-amp}
    include:                                    # extra cells over `defaults`; list values expand as a product
      - {model: tiny-bert, method: [lora, randlora]}
    slurm: {partition: gpu, constraint: h100}   # what --launcher slurm asks for (bench/parent/launchers/slurm.py)

Fields and their defaults are `cells.FIELDS` (`python -m bench list` prints them). A method in `exclude` matches
by name, or by a mapping whose keys all equal the cell's (e.g. {name: randlora, impl: compiled}).
`targets` and `trainable_modules` are lists themselves: in axes/include, a list of lists gives alternatives.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bench.spec import methods, modelcheck
from bench.spec.cells import FIELDS, Cell, FieldError, MethodSpec, resolve
from bench.core.errors import BenchError
from bench.spec.slurm import SlurmConfig, SlurmFieldError
from bench.core.yamlfile import Source

TOP_LEVEL = ("name", "description", "defaults", "axes", "include", "exclude", "slurm")
NAME = re.compile(r"[A-Za-z0-9._-]+")  # one path component under runs/ ('.' and '..' refused on their own)


def is_run_name(name: str) -> bool:
    """Whether `name` can name a run folder runs/<name>: one path component that stays inside runs/."""
    return bool(NAME.fullmatch(name)) and name not in (".", "..")


@dataclass(frozen=True)
class Grid:
    name: str
    description: str
    source: str  # the file it was read from
    text: str  # the YAML as read, copied into the run folder
    cells: tuple[Cell, ...]
    slurm: SlurmConfig = SlurmConfig()  # the `slurm:` section (frozen, so one default serves every grid)
    duplicates: int = 0  # combinations that resolved to a cell already listed (merged into it)


def embedded_grids() -> list[str]:
    folder = resources.files("bench").joinpath("grids")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def load(matrix: str) -> Grid:
    """`matrix` is a path to a YAML file, or the bare name of a grid embedded in the package; every cell's model is
    built on the meta device and its module patterns checked there (`modelcheck`), so nothing runs on a bad grid."""
    path = Path(matrix)
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in matrix:
        if not path.is_file():
            raise BenchError(f"--matrix {matrix!r} is not a file.")
        grid = parse(Source.read(path), default_name=path.stem)
    else:
        grid = _embedded(matrix)
    modelcheck.check(grid.cells, grid.source)
    return grid


def _embedded(matrix: str) -> Grid:
    if matrix not in embedded_grids():
        raise BenchError(
            f"--matrix {matrix!r} is neither a YAML file nor an embedded grid; "
            f"embedded grids are {', '.join(map(repr, embedded_grids()))}."
        )
    text = resources.files("bench").joinpath("grids", f"{matrix}.yaml").read_text(encoding="utf-8")
    return parse(Source(f"bench/grids/{matrix}.yaml", text), default_name=matrix)


def parse(source: Source, default_name: str) -> Grid:
    data = source.data
    if not isinstance(data, dict):
        raise source.error((), f"the grid must be a mapping with keys {', '.join(TOP_LEVEL)}.")
    for key in data:
        if key not in TOP_LEVEL:
            raise source.error((key,), f"is not a grid key; allowed keys are {', '.join(TOP_LEVEL)}.")
    for key in ("name", "description"):
        if key in data and not isinstance(data[key], str):
            raise source.error((key,), f"is {data[key]!r}; it must be a string.")
    if "name" in data and not is_run_name(data["name"]):
        raise source.error(
            ("name",),
            f"is {data['name']!r}; it names the run folder, so use letters, digits, '.', '_', '-' (not '.' or '..').",
        )
    if "axes" not in data and "include" not in data:
        raise source.error((), "the grid defines no cells; add 'axes' or 'include'.")

    defaults = {name: field.check(field.default) for name, field in FIELDS.items()}
    defaults.update(_checked_values(source, data.get("defaults"), ("defaults",), alternatives=False))
    excludes = [
        _checked_values(source, rule, ("exclude", i), alternatives=True)
        for i, rule in enumerate(_list(source, data.get("exclude"), ("exclude",)))
    ]
    cells: dict[str, Cell] = {}
    duplicates = 0
    if "axes" in data:
        axes = _checked_values(source, data["axes"], ("axes",), alternatives=True)
        for combo in _product(axes):
            if not any(_matches(combo, rule) for rule in excludes):
                duplicates += not _add(cells, source, ("axes",), {**defaults, **combo})
    for i, rule in enumerate(_list(source, data.get("include"), ("include",))):
        for combo in _product(_checked_values(source, rule, ("include", i), alternatives=True)):
            duplicates += not _add(cells, source, ("include", i), {**defaults, **combo})
    if not cells:
        raise source.error((), "the grid defines no cells (every combination is excluded).")
    name, description = data.get("name", default_name), data.get("description", "")
    slurm = _slurm(source, data.get("slurm"))
    return Grid(name, description, source.name, source.text, tuple(cells.values()), slurm, duplicates)


def _slurm(source: Source, section) -> SlurmConfig:
    if section is None:
        return SlurmConfig()
    if not isinstance(section, dict):
        raise source.error(("slurm",), "must be a mapping of Slurm settings (bench/README.md, 'On a Slurm cluster').")
    try:
        return SlurmConfig.from_dict(section)
    except SlurmFieldError as exc:
        raise source.error(("slurm", exc.field), str(exc)) from None


def _list(source: Source, value, at: tuple) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise source.error(at, "must be a list of mappings from field names to values.")
    return value


def _checked_values(source: Source, mapping, at: tuple, alternatives: bool) -> dict:
    """{field: value} (alternatives=False) or {field: [values]} with every value checked at its own location."""
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise source.error(at, "must be a mapping from field names to values.")
    checked = {}
    for name, raw in mapping.items():
        if name not in FIELDS:
            raise source.error(at + (name,), f"is not a cell field; allowed fields are {', '.join(FIELDS)}.")
        field = FIELDS[name]
        if not alternatives:
            checked[name] = _check(source, at + (name,), name, raw)
            continue
        many = isinstance(raw, list) and (not field.list_valued or all(isinstance(v, list) for v in raw))
        if many and not raw:
            raise source.error(at + (name,), "is an empty list; give at least one value.")
        values = raw if many else [raw]
        locations = [at + (name, i) for i in range(len(values))] if many else [at + (name,)]
        partial = at[0] == "exclude"
        checked[name] = [_check(source, loc, name, v, partial) for loc, v in zip(locations, values)]
    return checked


def _check(source: Source, at: tuple, name: str, raw, partial: bool = False):
    """The checked value; `partial` (exclude rules) lets a method be named by a subset of its parameters."""
    try:
        if partial and name == "method":
            return _method_pattern(raw)
        return FIELDS[name].check(raw)
    except FieldError as exc:
        raise source.error(at, str(exc)) from None


def _method_pattern(raw) -> dict:
    """An exclude rule's method: a name, or a mapping of the parameters it must have."""
    pattern = {"name": raw} if isinstance(raw, str) else raw
    if not isinstance(pattern, dict) or pattern.get("name") not in methods.METHODS:
        raise FieldError(f"is {raw!r}; write a method name ({', '.join(methods.METHODS)}) or a mapping with 'name'.")
    return pattern


def _product(axes: dict[str, list]) -> list[dict]:
    names = list(axes)
    return [dict(zip(names, values)) for values in itertools.product(*(axes[n] for n in names))]


def _matches(values: dict, rule: dict[str, list]) -> bool:
    return all(any(_equal(values[name], option) for option in options) for name, options in rule.items())


def _equal(value, option) -> bool:
    if isinstance(value, MethodSpec):
        params = value.kwargs
        return option["name"] == value.name and all(params.get(k) == v for k, v in option.items() if k != "name")
    return value == option


def _add(cells: dict[str, Cell], source: Source, at: tuple, values: dict) -> bool:
    """Add the cell of `values`; False when an equal cell is already there (the two are one)."""
    try:
        cell = resolve(values)
    except FieldError as exc:
        raise source.error(at, f"holds a cell where {exc}") from None
    return cells.setdefault(cell.hash, cell) is cell
