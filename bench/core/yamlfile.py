"""Safe YAML loading that remembers where each value was written, so errors can name the line."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.core.errors import BenchError

Location = tuple  # a path into the document: ("axes", "method", 2, "impl")


class Source:
    """A parsed YAML document and the line of every key and list item in it (1-based)."""

    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            self.data = yaml.safe_load(text)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f", line {mark.line + 1}" if mark is not None else ""
            raise BenchError(f"{name}{line}: the YAML does not parse ({exc.problem or exc.context}).") from None
        except yaml.YAMLError as exc:
            raise BenchError(f"{name}: the YAML does not parse ({exc}).") from None
        self._lines: dict[Location, int] = {}
        if root is not None:
            self._index(root, ())

    @classmethod
    def read(cls, path: Path) -> Source:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"{path}: the grid file cannot be read ({exc.strerror}).") from None
        return cls(str(path), text)

    def _index(self, node: yaml.Node, at: Location) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value
                if key in seen:
                    raise BenchError(f"{self.name}, line {key_node.start_mark.line + 1}: key {key!r} is written twice.")
                seen.add(key)
                self._lines[at + (key,)] = key_node.start_mark.line + 1
                self._index(value_node, at + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._lines[at + (i,)] = item.start_mark.line + 1
                self._index(item, at + (i,))

    def line(self, at: Location) -> int | None:
        """The line of `at`, or of its nearest enclosing entry."""
        while at:
            if at in self._lines:
                return self._lines[at]
            at = at[:-1]
        return None

    def error(self, at: Location, message: str) -> BenchError:
        """A BenchError naming this file, the line and the field at `at`: 'grid.yaml, line 7: axes.precision[1] ...'."""
        line = self.line(at)
        where = f"{self.name}, line {line}" if line else self.name
        return BenchError(f"{where}: {dotted(at)} {message}" if at else f"{where}: {message}")


def dotted(at: Location) -> str:
    """("axes", "method", 2, "impl") -> 'axes.method[2].impl'."""
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
