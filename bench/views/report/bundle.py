"""plotly.js for the page: the `basic` dist bundle (scatter, bar, pie and the layout components: all the report
draws), carried here gzipped and inlined as base64 that the page inflates with the browser's DecompressionStream.

Measured on plotly.js 4.1.1 (bytes): full bundle 4.8 M (what the Python package inlines), cartesian 1.50 M, basic
1.19 M; basic gzipped 395 k, as base64 526 k. A report of a typical run so weighs 0.6-1.3 MB and still opens offline
with no request: nothing is fetched, the bundle is decoded from the page itself.

assets/plotly-basic.min.js.gz   npm `plotly.js-basic-dist-min` 4.1.1, `gzip -9n`; MIT (assets/plotly-LICENSE.txt)
"""

from __future__ import annotations

import base64
import gzip
from importlib import resources

BUNDLE = "plotly-basic.min.js.gz"


def _asset() -> bytes:
    return resources.files("bench.views.report").joinpath("assets", BUNDLE).read_bytes()


def gzipped_base64() -> str:
    """The bundle as the page inlines it: gzip, then base64 (only A-Z a-z 0-9 + / =, safe inside a <script>)."""
    return base64.b64encode(_asset()).decode("ascii")


def plain() -> str:
    """The bundle as JavaScript, for a page that loads it from a file (`--plotly-js FILE`)."""
    source = gzip.decompress(_asset()).decode("utf-8")
    if "</script" in source.lower():  # would end an inline <script> early; never seen, but the page would break
        raise RuntimeError("this plotly.js contains '</script' and cannot be inlined")
    return source
