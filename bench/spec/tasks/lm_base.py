"""A small byte-level Llama pretrained on Python code: the base of the `lm-shift` task, built once and cached.

No pretrained causal LM small enough to ship exists offline (DATA.md), so the task makes its own: a transformers
LlamaForCausalLM over bytes (vocabulary 257: 256 byte values and EOS, corpus.py), sized by `BASES`, trained from a
seed on random windows of the standard library's code (corpus.python_code) with AdamW, a linear warm-up, a cosine
decay and gradient clipping, then scored on held-out code files and, zero-shot, on the film reviews it will be
adapted to (how far the shift is).

    <cache_dir>/byte-llama-<base>-s<seed>-k<steps>-<recipe hash>/
        config.json, model.safetensors      the model (LlamaForCausalLM.from_pretrained loads it)
        pretrain.json                       seed, steps, losses, accuracies, corpus digests, time, versions

The folder's name carries a hash of the whole recipe (sizes, optimiser, steps, seed, the corpus digest), so a
changed recipe never loads a stale model. It is written to a temporary folder and renamed, under a file lock, so
concurrent cells build it once (bench/spec/tasks/cache.py). `python -m bench.tools.prepare_accuracy --lm-cache DIR` builds
it ahead of time.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from bench.spec.tasks import cache, corpus
from bench.spec.tasks.cache import DEFAULT_CACHE

CONTEXT = 128  # bytes per pretraining window: the longest seq_len the task accepts
BASES = {  # LlamaConfig sizes; heads of 32 dimensions, MLP ~2.7x as in Llama
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},  # tests
    "small": {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 352},
    "medium": {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 8, "intermediate_size": 704},
}
RECIPE = {
    "optimizer": "adamw", "lr": 3e-3, "betas": (0.9, 0.95), "weight_decay": 0.1, "batch_size": 16,
    "context": CONTEXT, "warmup_share": 0.05, "schedule": "cosine", "grad_clip": 1.0, "v": 1,
}  # fmt: skip
SCORE_WINDOWS = 128  # held-out windows scored after pretraining (code, and reviews zero-shot)


def config_kwargs(base: str) -> dict:
    return {
        **BASES[base],
        "num_key_value_heads": BASES[base]["num_attention_heads"],
        "vocab_size": corpus.VOCAB,
        "max_position_embeddings": CONTEXT,
        "bos_token_id": None,
        "eos_token_id": corpus.EOS,
        "pad_token_id": None,
        "tie_word_embeddings": False,
        "use_cache": False,
    }


def cache_folder(cache_dir: str | None, base: str, seed: int, steps: int, corpus_sha256: str) -> Path:
    recipe = json.dumps({"config": config_kwargs(base), "recipe": RECIPE, "seed": seed, "steps": steps,
                         "corpus": corpus_sha256}, sort_keys=True)
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() if cache_dir else DEFAULT_CACHE.expanduser()
    return root / f"byte-llama-{base}-s{seed}-k{steps}-{digest}"


def ensure_pretrained(cache_dir: str | None, base: str, seed: int, steps: int, device) -> Path:
    """The cached folder of this recipe, pretraining it on `device` first if it is not there yet."""
    code = corpus.python_code()
    folder = cache_folder(cache_dir, base, seed, steps, code.sha256())
    return cache.build_once(folder, lambda scratch: pretrain(scratch, code, base, seed, steps, device))


def random_windows(stream, batch_size: int, seq_len: int, generator):
    """(batch_size, seq_len) int64 windows of `stream` (a 1-D tensor) at offsets drawn from `generator`."""
    import torch

    offsets = torch.randint(0, len(stream) - seq_len + 1, (batch_size, 1), generator=generator)
    return stream[(offsets + torch.arange(seq_len)).to(stream.device)].long()


def train(model, stream, steps: int, seed: int, recipe: dict, parameters=None) -> list:
    """`steps` AdamW steps of causal-LM loss on random windows of `stream` drawn from `seed`: a linear warm-up over
    recipe["warmup_share"] of the steps, a cosine decay to 0, gradients clipped to recipe["grad_clip"]; the
    parameters trained are `parameters` (default: all). Returns the losses (detached tensors), one per step."""
    import torch

    trained = list(model.parameters() if parameters is None else parameters)
    optimizer = torch.optim.AdamW(trained, lr=recipe["lr"], betas=recipe["betas"],
                                  weight_decay=recipe["weight_decay"])
    warmup = max(1, round(recipe["warmup_share"] * steps))
    shape = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, shape)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        batch = random_windows(stream, recipe["batch_size"], recipe["context"], generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, recipe["grad_clip"])
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return losses


def pretrain(out: Path, code: corpus.Corpus, base: str, seed: int, steps: int, device) -> dict:
    """Train the byte Llama on `code` from `seed` for `steps` steps; save it with its record into `out`."""
    import torch
    import transformers

    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if torch.device(device).type == "cuda" else []):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**config_kwargs(base), attn_implementation="sdpa")
        ).to(device)
        stream = torch.as_tensor(code.train.astype("int64")).to(device)
        losses = train(model, stream, steps, seed, RECIPE)
        train_s = time.perf_counter() - started
        tail = torch.stack(losses[-max(1, steps // 10) :]).mean().item()
        code_val = score(model, torch.as_tensor(code.val.astype("int64")).to(device), CONTEXT, 64, SCORE_WINDOWS)
        reviews = corpus.film_reviews()
        shift = score(model, torch.as_tensor(reviews.val.astype("int64")).to(device), CONTEXT, 64, SCORE_WINDOWS)
    from bench.spec.tasks.minilm import quiet_loading

    with quiet_loading():
        model.save_pretrained(str(out))
    record = {
        "base": base,
        "seed": seed,
        "steps": steps,
        "tokens": steps * RECIPE["batch_size"] * CONTEXT,
        "train_loss_last_tenth": tail,
        "code_val_loss": code_val["loss"],
        "code_val_accuracy": code_val["accuracy"],
        "reviews_val_loss_zero_shot": shift["loss"],
        "reviews_val_accuracy_zero_shot": shift["accuracy"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus": code.name,
        "corpus_sha256": code.sha256(),
        "train_s": train_s,
        "device": str(device),
        "config": config_kwargs(base),
        "recipe": RECIPE,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
    }
    (out / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def score(model, stream, seq_len: int, batch_size: int, limit: int | None) -> dict:
    """Mean next-byte cross-entropy (nats) and top-1 accuracy over the consecutive `seq_len` windows of `stream`
    (the first `limit` of them; None: all), every predicted byte weighted alike; eval mode, restored after.

    A window of seq_len bytes predicts its last seq_len - 1 from the ones before (no context crosses windows).
    """
    import torch

    windows = stream[: len(stream) // seq_len * seq_len].view(-1, seq_len)[:limit]
    was_training = model.training
    model.eval()
    nats, hits = torch.zeros((), dtype=torch.float64), 0
    try:
        with torch.no_grad():
            for i in range(0, len(windows), batch_size):
                batch = windows[i : i + batch_size]
                logits = model(input_ids=batch).logits[:, :-1].float()  # (B, S-1, V)
                targets = batch[:, 1:]
                nats += torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="sum").cpu()
                hits += (logits.argmax(-1) == targets).sum().item()
    finally:
        model.train(was_training)
    predicted = windows.shape[0] * (seq_len - 1)
    return {"loss": nats.item() / predicted, "accuracy": hits / predicted, "tokens": predicted}


def load(folder: Path, device, dtype):
    """The pretrained byte Llama, read in float32, moved to `device` and `dtype`; and its pretraining record."""
    import torch
    import transformers

    from bench.spec.tasks.minilm import quiet_loading

    with quiet_loading():
        model = transformers.LlamaForCausalLM.from_pretrained(str(folder), dtype=torch.float32,
                                                              attn_implementation="sdpa")
    record = json.loads((folder / "pretrain.json").read_text(encoding="utf-8"))
    return model.to(device=device, dtype=dtype), record
