"""A real fine-tuning update: the `lm-shift` base's projections fully fine-tuned on the film reviews, built once.

The `update-probe` task (update_probe.py) asks each method to reproduce this update, ΔW* = W_ft − W0, layer by
layer on the inputs those layers really see. Only the adapted projections train here (embeddings, norms and the
output layer stay frozen), so ΔW* is the whole of what full fine-tuning of those weights changed and nothing else
had to compensate; the recipe is the one the harness gives every method in the rank study (AdamW, a 5 % linear
warm-up, a cosine decay to 0, gradients clipped to norm 1, 32 windows of 128 bytes per step).

    <base folder>-ft-<recipe hash>/
        update.safetensors      ΔW* per projection (float32, keyed by the module's name)
        finetune.json           the recipe, val/test loss and accuracy before and after, ΔW*'s spectrum summary

The folder's name carries a hash of the base and the whole recipe; it is built in a scratch folder and renamed
under a file lock (cache.py), so concurrent cells build it once.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from bench.spec.tasks import cache, corpus, lm_base

FILES = ("update.safetensors", "finetune.json")
RECIPE = {
    "optimizer": "adamw", "betas": (0.9, 0.999), "weight_decay": 0.0, "context": lm_base.CONTEXT,
    "warmup_share": 0.05, "schedule": "cosine", "grad_clip": 1.0, "trains": "targets only", "v": 1,
}  # fmt: skip
SCORE_WINDOWS = 256  # held-out windows scored before and after


def folder_for(base_folder: Path, targets: tuple[str, ...], steps: int, lr: float, batch_size: int, seed: int) -> Path:
    recipe = json.dumps({"base": base_folder.name, "targets": list(targets), "steps": steps, "lr": lr,
                         "batch_size": batch_size, "seed": seed, "recipe": RECIPE}, sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    return base_folder.parent / f"{base_folder.name}-ft-{digest}"


def ensure_update(base_folder: Path, targets: tuple[str, ...], steps: int, lr: float, batch_size: int, seed: int,
                  device) -> Path:
    """The cached folder of this fine-tuning, running it on `device` first if it is not there yet."""
    folder = folder_for(base_folder, targets, steps, lr, batch_size, seed)
    build = lambda scratch: finetune(scratch, base_folder, targets, steps, lr, batch_size, seed, device)
    return cache.build_once(folder, build, FILES)


def spectrum_summary(change) -> dict:
    """How low-rank an update is: its stable rank ‖ΔW‖²_F / ‖ΔW‖²_2, its effective rank exp(entropy of the
    normalised squared singular values), and the share of its energy in the top 8 singular values."""
    import torch

    energy = torch.linalg.svdvals(change.float()).pow(2)
    share = energy / energy.sum()
    entropy = -(share * share.clamp_min(1e-30).log()).sum().item()
    return {"stable_rank": (energy.sum() / energy[0]).item(), "effective_rank": float(torch.tensor(entropy).exp()),
            "top8_energy": share[:8].sum().item(), "rank_cap": min(change.shape)}


def finetune(out: Path, base_folder: Path, targets: tuple[str, ...], steps: int, lr: float, batch_size: int,
             seed: int, device) -> dict:
    """Fine-tune the targeted projections of the base in `base_folder`; write ΔW* and the record into `out`."""
    import torch
    from safetensors.torch import save_file

    from bench.spec.methods import resolve_modules

    started = time.perf_counter()
    model, _ = lm_base.load(base_folder, device, torch.float32)
    names = resolve_modules(model, tuple(targets), "targets", linear_only=True)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    weights = {name: model.get_submodule(name).weight for name in names}
    before = {name: w.detach().clone() for name, w in weights.items()}
    for weight in weights.values():
        weight.requires_grad_(True)
    reviews = corpus.film_reviews()
    streams = {split: torch.as_tensor(getattr(reviews, split).astype("int64")).to(device)
               for split in ("train", "val", "test")}  # fmt: skip
    scores = {"before": {s: lm_base.score(model, streams[s], lm_base.CONTEXT, 64, SCORE_WINDOWS) for s in ("val", "test")}}
    recipe = {**RECIPE, "lr": lr, "batch_size": batch_size}
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        losses = lm_base.train(model, streams["train"], steps, seed, recipe, list(weights.values()))
    scores["after"] = {s: lm_base.score(model, streams[s], lm_base.CONTEXT, 64, SCORE_WINDOWS) for s in ("val", "test")}
    changes = {name: (w.detach() - before[name]).float().cpu().contiguous() for name, w in weights.items()}
    save_file(changes, str(out / "update.safetensors"))
    spectra = {name: spectrum_summary(change) for name, change in changes.items()}
    record = {
        "base": base_folder.name, "targets": list(targets), "layers": len(changes), "steps": steps, "lr": lr,
        "batch_size": batch_size, "seed": seed, "recipe": RECIPE,
        "train_loss_last_tenth": torch.stack(losses[-max(1, steps // 10):]).mean().item(),
        "scores": scores, "spectra": spectra,
        "relative_norm": sum(c.pow(2).sum().item() for c in changes.values()) ** 0.5
        / sum(b.float().pow(2).sum().item() for b in before.values()) ** 0.5,
        "train_s": time.perf_counter() - started, "device": str(device), "torch_version": torch.__version__,
    }  # fmt: skip
    (out / "finetune.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def load_update(folder: Path, device) -> tuple[dict, dict]:
    """({module name: ΔW* float32 on `device`}, the fine-tuning record)."""
    from safetensors.torch import load_file

    changes = {name: tensor.to(device) for name, tensor in load_file(str(folder / "update.safetensors")).items()}
    return changes, json.loads((folder / "finetune.json").read_text(encoding="utf-8"))
