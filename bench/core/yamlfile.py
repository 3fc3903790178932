"""Safe, bounded YAML loading that remembers where each value was written, so errors can name the line.

Bounded: a grid is a small hand-written file, so the text, its nesting and its size with every alias expanded
are capped before anything walks the document (nine levels of nine aliases fit in 1 KB and expand to 9**9
nodes). Numbers in scientific notation without a dot (`1e-4`) are floats, as in YAML 1.2 (YAML 1.1 reads them
as strings).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bench.core.errors import BenchError

Location = tuple  # a path into the document: ("axes", "method", 2, "impl")
MAX_BYTES = 1 << 20
MAX_DEPTH = 64  # collections within collections, aliases expanded
MAX_NODES = 100_000  # scalars and collections, aliases expanded

# YAML 1.2's floats that YAML 1.1's resolver misses: an exponent without a dot or without a sign (1e-4, 1.0e308).
_FLOAT_1_2 = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _TooLarge(Exception):
    """The document exceeds a bound; `str()` says which."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-4 as a float and refuses nesting deeper than MAX_DEPTH while composing (the
    composer recurses: 500 levels would end in a RecursionError)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _TooLarge(f"it nests deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expanded(root: yaml.Node) -> None:
    """Refuse a document whose tree, every alias expanded, holds more than MAX_NODES nodes, nests deeper than
    MAX_DEPTH, or contains itself. One pass over the distinct nodes (an alias is the node it names), no recursion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the path from the root: meeting one again is a cycle
    stack = [(root, False)]
    while stack:
        node, closing = stack.pop()
        key = id(node)
        if closing:
            open_nodes.discard(key)
            children = _children(node)
            size[key] = min(1 + sum(size[id(c)] for c in children), MAX_NODES + 1)
            depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[key] > MAX_NODES:
                raise _TooLarge(f"its aliases expand it to more than {MAX_NODES:,} values")
            if depth[key] > MAX_DEPTH:
                raise _TooLarge(f"its aliases nest it deeper than {MAX_DEPTH} levels")
            continue
        if key in size:
            continue
        if key in open_nodes:
            raise _TooLarge("an alias refers to a collection that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))


class Source:
    """A parsed YAML document and the line of every key and list item in it (1-based)."""

    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text
        if len(text) > MAX_BYTES:
            raise BenchError(f"{name}: the grid is {len(text):,} characters; a grid holds at most {MAX_BYTES:,}.")
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            self._lines: dict[Location, int] = {}
            if root is not None:
                _check_expanded(root)
                self._index(root, ())  # before constructing: that merges `<<` keys into their mappings in place
            self.data = loader.construct_document(root) if root is not None else None
        except _TooLarge as exc:
            raise BenchError(f"{name}: the grid is refused because {exc}; write the values out plainly.") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f", line {mark.line + 1}" if mark is not None else ""
            raise BenchError(f"{name}{line}: the YAML does not parse ({exc.problem or exc.context}).") from None
        except yaml.YAMLError as exc:
            raise BenchError(f"{name}: the YAML does not parse ({exc}).") from None
        finally:
            loader.dispose()

    @classmethod
    def read(cls, path: Path) -> Source:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise BenchError(f"{path}: the grid file cannot be read ({exc.strerror}).") from None
        except UnicodeDecodeError as exc:
            raise BenchError(
                f"{path}: the grid file is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                "save it as UTF-8."
            ) from None
        return cls(str(path), text)

    def _index(self, node: yaml.Node, at: Location) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    line = key_node.start_mark.line + 1
                    raise BenchError(f"{self.name}, line {line}: a key is a collection; keys are plain names.")
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
        if isinstance(part, int):
            text += f"[{part}]"
        elif not _PLAIN_KEY.fullmatch(str(part)):  # a key with a newline or a quote is written as Python would
            text += f"[{str(part)!r}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
