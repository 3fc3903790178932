"""Matched parameter budgets: the RandLoRA rank whose trainable count is closest to LoRA's, as the paper does.

    python -m bench.tools.budget minilm-l6 --lora-r 8       # LoRA r=8 vs RandLoRA r=... on MiniLM
    python -m bench.tools.budget llama-60m --lora-r 16 --targets q_proj v_proj

Per adapted (out, in) layer, with d = min(in, out) (RandLoRA.md):
    LoRA      r · (in + out)
    RandLoRA  n · (r + d), n = ceil(d / r)        (raising r lowers the count)
The modules trained in full by every method (a head, a pooler) add the same number to every method and are
left out. Shapes come from the model built on the meta device (no memory, no weights): a preset, or a model an
accuracy task brings (minilm-l6 from its config.json, vit-fmnist from its recipe, byte-llama[-<base>] from
lm_base.BASES).
"""

from __future__ import annotations

import argparse
import math
import sys

from bench.spec.tasks.text import TARGETS as TEXT_TARGETS
from bench.spec.tasks.text import TRAINABLE as TEXT_TRAINABLE


def lora_params(shapes: list[tuple[int, int]], r: int) -> int:
    return sum(r * (out + inp) for out, inp in shapes)


def randlora_params(shapes: list[tuple[int, int]], r: int) -> int:
    return sum(math.ceil(min(shape) / r) * (r + min(shape)) for shape in shapes)


def matched_randlora_rank(shapes: list[tuple[int, int]], lora_r: int) -> int:
    """The RandLoRA rank (1 .. the largest d) whose count is closest to LoRA's at `lora_r`; ties: the larger rank."""
    target = lora_params(shapes, lora_r)
    ranks = range(1, max(min(s) for s in shapes) + 1)
    return min(ranks, key=lambda r: (abs(randlora_params(shapes, r) - target), -r))


def _meta_model(model: str):
    import torch
    import transformers

    from bench.spec import presets
    from bench.spec.tasks import lm_base, lm_shift, minilm, vit

    with torch.device("meta"):
        if model.startswith(lm_shift.MODEL):  # byte-llama (its small base) or byte-llama-<base>
            config = transformers.LlamaConfig(**lm_base.config_kwargs(model[len(lm_shift.MODEL) + 1 :] or "small"))
            return transformers.LlamaForCausalLM(config), lm_shift.TARGETS, lm_shift.TRAINABLE
        if model == "minilm-l6":
            config = transformers.AutoConfig.from_pretrained(str(minilm.folder(None)), num_labels=2)
            return transformers.BertForSequenceClassification(config), TEXT_TARGETS, TEXT_TRAINABLE
        if model == "vit-fmnist":
            return transformers.ViTForImageClassification(transformers.ViTConfig(**vit.CONFIG)), ("all-linear",), (
                "classifier",)
        preset = presets.PRESETS[model]
        config = getattr(transformers, preset.spec.config_class)(**preset.config)
        return getattr(transformers, preset.spec.model_class)(config), preset.spec.targets, preset.spec.trainable


def target_shapes(model: str, targets: tuple[str, ...] | None = None) -> list[tuple[int, int]]:
    """(out, in) of every layer the adapters wrap on `model` with `targets` (None: the model's default targets)."""
    from randlora import select_modules
    from randlora.layouts import features

    net, default_targets, trainable = _meta_model(model)
    chosen = select_modules(net, tuple(targets or default_targets), "targets", linear_only=True, exclude=trainable)
    return [features(m) for m in chosen.values()]  # nn.Linear or Conv1D


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.budget", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a preset, minilm-l6, vit-fmnist or byte-llama[-<base>]")
    parser.add_argument("--lora-r", type=int, nargs="+", default=[4, 8, 16], help="LoRA ranks to match")
    parser.add_argument("--targets", nargs="+", help="module names or patterns (default: the model's)")
    args = parser.parse_args(argv)
    shapes = target_shapes(args.model, tuple(args.targets) if args.targets else None)
    print(f"{args.model}: {len(shapes)} adapted layers")
    for lora_r in args.lora_r:
        rank = matched_randlora_rank(shapes, lora_r)
        lora, rand = lora_params(shapes, lora_r), randlora_params(shapes, rank)
        print(f"LoRA r={lora_r}: {lora:,}  ~  RandLoRA r={rank}: {rand:,} ({100 * (rand / lora - 1):+.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
