"""A small ViT pretrained on Fashion-MNIST: the base of the vision transfer task, built once and cached.

No pretrained ViT small enough to ship exists offline, so the task makes its own (DATA.md): a transformers
ViTForImageClassification for 28x28 grey images in 4x4 patches (49 patches + CLS), hidden 128, 4 layers of 4
heads, MLP 512 (0.8M parameters, 3.2 MB in float32), trained from a seed on Fashion-MNIST's 60k training
images with AdamW and a cosine schedule, then scored on its 10k test images.

    <cache_dir>/vit-fmnist-s<seed>-e<epochs>-<recipe hash>/
        config.json, model.safetensors      the model (ViTForImageClassification.from_pretrained loads it)
        pretrain.json                       seed, epochs, samples, the Fashion-MNIST test accuracy, time, versions

The folder's name carries a hash of the whole recipe, so a changed recipe never loads a stale model. It is
written to a temporary folder and renamed, under a file lock, so concurrent cells build it once.
`python -m bench.tools.prepare_accuracy --vit-cache DIR` builds it ahead of time (about 200 s on two CPU cores).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from bench.spec.tasks import cache, data
from bench.spec.tasks.cache import DEFAULT_CACHE

CONFIG = {
    "image_size": 28,
    "patch_size": 4,
    "num_channels": 1,
    "hidden_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "num_labels": 10,
}
TOKENS = (CONFIG["image_size"] // CONFIG["patch_size"]) ** 2 + 1  # patches plus CLS: a sample's sequence length
RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "batch_size": 128, "schedule": "cosine", "v": 1}


def pixels(images, device, dtype):
    """uint8 (N, 28, 28) -> (N, 1, 28, 28) in [-1, 1], on `device` in `dtype`."""
    import torch

    x = torch.as_tensor(images).to(device=device, dtype=torch.float32).unsqueeze(1)
    return ((x / 255.0 - 0.5) / 0.5).to(dtype)


def cache_folder(cache_dir: str | None, seed: int, epochs: int, samples: int | None) -> Path:
    recipe = json.dumps({"config": CONFIG, "recipe": RECIPE, "seed": seed, "epochs": epochs, "samples": samples},
                        sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE.expanduser()
    return root / f"vit-fmnist-s{seed}-e{epochs}-{digest}"


def ensure_pretrained(cache_dir: str | None, seed: int, epochs: int, samples: int | None, fashion_mnist_dir: str | None,
                      device) -> Path:
    """The cached folder of this recipe, pretraining it on `device` first if it is not there yet."""
    return cache.build_once(
        cache_folder(cache_dir, seed, epochs, samples),
        lambda scratch: pretrain(scratch, seed, epochs, samples, fashion_mnist_dir, device),
    )


def pretrain(out: Path, seed: int, epochs: int, samples: int | None, fashion_mnist_dir: str | None, device) -> dict:
    """Train the ViT on Fashion-MNIST from `seed` and save it with its record into `out`; returns the record."""
    import torch
    import transformers

    train, test = data.fashion_mnist(fashion_mnist_dir)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        config = transformers.ViTConfig(**CONFIG, attn_implementation="sdpa")
        model = transformers.ViTForImageClassification(config).to(device)
        images = train.inputs if samples is None else train.inputs[:samples]
        x, y = pixels(images, device, torch.float32), torch.as_tensor(train.labels[: len(images)]).to(device)
        batch = RECIPE["batch_size"]
        per_epoch = len(x) // batch
        total = epochs * per_epoch
        optimizer = torch.optim.AdamW(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
        cosine = lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        generator = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=generator).to(device)
            for i in range(per_epoch):
                index = order[i * batch : (i + 1) * batch]
                loss = model(pixel_values=x[index], labels=y[index]).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
        test_images = test.inputs if samples is None else test.inputs[:samples]
        x_test = pixels(test_images, device, torch.float32)
        accuracy = _accuracy(model, x_test, torch.as_tensor(test.labels[: len(test_images)]).to(device))
    from bench.spec.tasks.minilm import quiet_loading

    with quiet_loading():
        model.save_pretrained(str(out))
    record = {
        "seed": seed,
        "epochs": epochs,
        "samples": len(images),
        "test_samples": len(test_images),
        "steps": total,
        "fashion_mnist_test_accuracy": accuracy,
        "train_s": time.perf_counter() - started,
        "device": str(device),
        "config": CONFIG,
        "recipe": RECIPE,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    (out / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _accuracy(model, x, y, batch_size: int = 1000) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        hits = sum((model(pixel_values=x[i : i + batch_size]).logits.argmax(-1) == y[i : i + batch_size]).sum().item()
                   for i in range(0, len(x), batch_size))
    return hits / len(x)


def load_for_transfer(folder: Path, device, dtype):
    """The pretrained ViT with a fresh 10-way head (initialised from torch's global RNG, which the cell seeds),
    read in float32, then moved to `device` and `dtype`; and its pretraining record."""
    import torch
    import transformers

    from bench.spec.tasks.minilm import quiet_loading

    with quiet_loading():
        model = transformers.ViTForImageClassification.from_pretrained(
            str(folder), dtype=torch.float32, attn_implementation="sdpa"
        )
    model.classifier.reset_parameters()
    record = json.loads((folder / "pretrain.json").read_text(encoding="utf-8"))
    return model.to(device=device, dtype=dtype), record
