"""Random grid documents, valid and invalid, through `bench run --matrix FILE --dry-run`: exit 0 or 2, never an
uncaught exception; on exit 2 exactly one `error:` line on stderr and no run folder.

BENCH_FUZZ_EXAMPLES=5000 pytest tests/bench/test_fuzz_grids.py   # a longer search than CI's default
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import cli
from bench.spec.cells import FIELDS
from bench.spec.grid import TOP_LEVEL

EXAMPLES = int(os.environ.get("BENCH_FUZZ_EXAMPLES", "200"))
NAMES = st.sampled_from(["tiny-llama", "tiny-bert", "full", "lora", "randlora", "fp32", "bf16", "cpu", "cell", "a/b"])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.integers(min_value=0, max_value=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    NAMES,
)
keys = st.one_of(st.sampled_from(list(FIELDS) + list(TOP_LEVEL) + ["name", "impl", "r"]), st.text(max_size=8))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12,
)
field_maps = st.dictionaries(st.sampled_from(list(FIELDS)), values, max_size=4)
documents = st.one_of(
    values,  # anything at all
    st.dictionaries(keys, values, max_size=5),
    st.fixed_dictionaries(  # close to a real grid: most keys right, values random
        {},
        optional={
            "name": st.one_of(st.text(max_size=8), NAMES),
            "defaults": field_maps,
            "axes": field_maps,
            "include": st.lists(field_maps, max_size=2),
            "exclude": st.lists(field_maps, max_size=2),
            "slurm": values,
        },
    ),
)
texts = st.one_of(
    documents.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.text(alphabet=st.sampled_from(list("abc:-[]{},&*!?|>'\"#\n 01e.")), max_size=60),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize="BENCH_FUZZ_EXAMPLES" not in os.environ,  # CI: the same examples every run; a long search: new ones
)
@given(text=texts)
def test_any_grid_document_is_listed_or_refused_in_one_sentence(text):
    with tempfile.TemporaryDirectory() as tmp:
        grid, run_dir = Path(tmp) / "grid.yaml", Path(tmp) / "run"
        grid.write_text(text, encoding="utf-8")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["run", "--matrix", str(grid), "--run-dir", str(run_dir), "--dry-run"])
        assert code in (0, 2), (code, text)
        assert not run_dir.exists()
        if code == 2:
            lines = err.getvalue().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (lines, text)
