"""What a report page weighs, part by part: each section, table, <details> and <script> of at least a threshold.

    python -m bench.tools.page_weight reports/rank-h200/report.html [--min-bytes 20000]

Prints the page's size, then one line per element of at least --min-bytes (its bytes of markup, children indented
under it), heaviest first: where to look when a page outgrows its budget (issue 16: 1.5 MB self-contained).
"""

from __future__ import annotations

import argparse
from html.parser import HTMLParser
from pathlib import Path

WEIGHED = ("section", "table", "details", "script")


class _Weigher(HTMLParser):
    """Records (depth, tag, id or class, bytes) for each WEIGHED element, from its start tag to its end tag."""

    def __init__(self, source: str):
        super().__init__(convert_charrefs=False)
        self.line_starts = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]
        self.open: list[tuple[str, str, int]] = []
        self.parts: list[tuple[int, str, str, int]] = []

    def _offset(self) -> int:
        line, column = self.getpos()
        return self.line_starts[line - 1] + column

    def handle_starttag(self, tag, attrs):
        if tag in WEIGHED:
            names = dict(attrs)
            self.open.append((tag, names.get("id") or names.get("class") or "", self._offset()))

    def handle_endtag(self, tag):
        for k in range(len(self.open) - 1, -1, -1):
            if self.open[k][0] == tag:
                tag, name, start = self.open.pop(k)
                self.parts.append((k, tag, name, self._offset() + len(f"</{tag}>") - start))
                return


def weigh(source: str) -> list[tuple[int, str, str, int]]:
    """(depth, tag, id or class, size of its markup) of every WEIGHED element of `source`, in the order they close.
    Sizes are in characters: bytes but for the few non-ASCII symbols a page holds."""
    weigher = _Weigher(source)
    weigher.feed(source)
    weigher.close()
    return weigher.parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.page_weight", description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="a report page (bench report -o PAGE)")
    parser.add_argument("--min-bytes", type=int, default=20_000, help="leave out lighter elements (default 20000)")
    args = parser.parse_args(argv)
    source = args.page.read_text(encoding="utf-8")
    print(f"{len(source.encode('utf-8')):>10,}  {args.page}")
    for depth, tag, name, size in sorted(weigh(source), key=lambda part: -part[3]):
        if size >= args.min_bytes:
            print(f"{size:>10,}  {'  ' * (depth + 1)}{tag} {name}".rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
