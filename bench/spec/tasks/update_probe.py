"""Real-update probe (`update-probe`): how much of an actual full fine-tuning update can each method reproduce?

    target    ΔW* = W_ft − W0 of every adapted projection of the `lm-shift` byte Llama, from a real full
              fine-tuning of those projections on the film reviews (lm_update.py, built once and cached)
    inputs    the activations those layers really see: the base model run on review windows (a training pool of
              `train_windows` random windows, and the first `eval_windows` consecutive windows of validation and
              of test), captured at each layer's input
    student   the base adapted by the cell's method, trained layer by layer as in the full-rank probe's `layers`
              mode (probe.py): loss = Σ_l ‖x_l (ΔŴ_l − ΔW*_l)ᵀ‖² / Σ_l ‖x_l ΔW*_lᵀ‖² on a batch of real inputs

The synthetic probe asks what a method can express against a change with no structure; this one asks the paper's
question on the change a real adaptation makes, seen through the inputs that matter. If full fine-tuning's update
is close to low rank in the metric of its inputs, LoRA reproduces most of it and the gap on the task is about
parameters; if it is spread over many directions, a full-rank update at the same count (RandLoRA) has the edge.

Metrics (beside the full-rank probe's): val_/test_output_recovered = 1 − the loss on the held-out inputs (the
selection metric); delta_recovered (Frobenius, as in probe.py); p_over_n; for LoRA cells `top_r_energy`, the best
any rank-r update can do in the output metric (the top r of the singular values of X ΔW*ᵀ on the test inputs);
and the target's own shape: target_stable_rank, target_effective_rank, target_top8_energy (means over layers),
target_test_accuracy (the fine-tuned model's next-byte accuracy) and the base's before it.
"""

from __future__ import annotations

from bench.spec.tasks import corpus, lm_base, lm_shift, lm_update, probe
from bench.spec.tasks.args import Arg, integer, number, optional, patterns, resolve_args
from bench.spec.tasks.base import Task, register
from bench.spec.tasks.classify import with_data

NAME, MODEL = "update-probe", lm_shift.MODEL
POOL_SEED = 7_777_777  # the training pool's windows: one pool for every cell, so cells differ only by their seed

ARGS = {
    **{name: lm_shift.ARGS[name] for name in ("cache_dir", "base", "pretrain_seed", "pretrain_steps")},
    "layers": Arg(None, optional(patterns), "the projections ΔW* is taken from (names or patterns); null: the "
                  "cell's targets, every projection by default"),
    "ft_steps": Arg(400, integer(1), "steps of the full fine-tuning that makes ΔW*"),
    "ft_lr": Arg(1e-2, number(1e-7, 1.0), "its AdamW rate (the rate full fine-tuning chose on lm-shift)"),
    "ft_batch_size": Arg(32, integer(1), "its windows of 128 bytes per step"),
    "ft_seed": Arg(0, integer(0), "its seed (not the cell's: one target for all cells)"),
    "train_windows": Arg(64, integer(1), "review windows whose activations form the training pool"),
    "eval_windows": Arg(32, integer(1), "consecutive windows of validation and of test scored"),
}


def resolve(values: dict) -> dict:
    values["task_args"] = args = resolve_args(NAME, ARGS, values["task_args"])
    values = lm_shift.on_the_base(NAME, values)  # the loss never reaches anything but the adapted layers
    if args["layers"] is None:
        args["layers"] = list(values["targets"])  # full fine-tuning has no targets but keeps these
    return values


def capture_inputs(model, names: tuple[str, ...], windows) -> list:
    """[(windows, seq_len, in_l)] the input of each module in `names` when `model` reads `windows` (eval, no grad)."""
    import torch

    captured: dict[str, object] = {}
    hooks = [model.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: captured.__setitem__(name, args[0].detach().clone()))
        for name in names]  # fmt: skip
    try:
        with torch.no_grad():
            model(input_ids=windows)
    finally:
        for hook in hooks:
            hook.remove()
    return [captured[name] for name in names]


def output_ceiling(changes: list, inputs: list, r: int) -> float:
    """The largest share of Σ_l ‖x_l ΔW*_lᵀ‖² that rank-r updates can reproduce: Σ_l top-r energy of x_l ΔW*_lᵀ."""
    import torch

    top = total = 0.0
    for change, x in zip(changes, inputs):
        energy = torch.linalg.svdvals(x.reshape(-1, x.shape[-1]).float() @ change.T).pow(2)
        top += energy[:r].sum().item()
        total += energy.sum().item()
    return top / total


def _sampler(pools: dict, seq_len: int):
    """inputs(layer, split, rows, seed): held-out splits give their whole pool; training draws rows // seq_len
    windows of the pool from `seed` (the same windows for every layer of one step)."""
    import torch

    def inputs(index: int, split: str, rows: int, seed: int):
        pool = pools[split][index]
        if split != "train":
            return pool.reshape(-1, pool.shape[-1])
        picks = torch.randint(0, pool.shape[0], (max(1, rows // seq_len),), generator=torch.Generator().manual_seed(seed))
        return pool[picks.to(pool.device)].reshape(-1, pool.shape[-1])

    return inputs


def build_model(cell, device, dtype):
    import torch

    from bench.spec.methods import resolve_modules
    from bench.spec.presets import model_info

    args = cell.task_kwargs
    base = lm_base.ensure_pretrained(args["cache_dir"], args["base"], args["pretrain_seed"], args["pretrain_steps"],
                                     device)
    layer_patterns = tuple(args["layers"])
    folder = lm_update.ensure_update(base, layer_patterns, args["ft_steps"], args["ft_lr"], args["ft_batch_size"],
                                     args["ft_seed"], device)
    changes, record = lm_update.load_update(folder, device)
    model, _ = lm_base.load(base, device, dtype)
    model.eval()
    names = resolve_modules(model, layer_patterns, "task_args.layers", linear_only=True)
    reviews = corpus.film_reviews()
    streams = {s: torch.as_tensor(getattr(reviews, s).astype("int64")).to(device) for s in ("train", "val", "test")}
    seq_len = cell.seq_len
    windows = {
        "train": lm_base.random_windows(streams["train"], args["train_windows"], seq_len,
                                        torch.Generator().manual_seed(POOL_SEED)),
        **{s: streams[s][: args["eval_windows"] * seq_len].view(-1, seq_len) for s in ("val", "test")},
    }  # fmt: skip
    pools = {split: capture_inputs(model, names, w) for split, w in windows.items()}
    layers = {name: (model.get_submodule(name).weight.detach().clone(), changes[name]) for name in names}
    ceiling = None
    if cell.method.name in probe.LORA_METHODS:
        ceiling = output_ceiling([changes[n] for n in names], pools["test"], cell.method.kwargs["r"])
    spectra = [record["spectra"][name] for name in names]
    extra = {
        **{f"target_{k}": sum(s[k] for s in spectra) / len(spectra)
           for k in ("stable_rank", "effective_rank", "top8_energy")},
        "target_relative_norm": record["relative_norm"],
        "target_test_accuracy": record["scores"]["after"]["test"]["accuracy"],
        "base_test_accuracy": record["scores"]["before"]["test"]["accuracy"],
        "target_folder": folder.name,
    }  # fmt: skip
    target = probe.Probe("layers", layers, cell.batch_size * seq_len, args["eval_windows"] * seq_len, cell.seed,
                         ceiling, sum(changes[n].pow(2).sum().item() for n in names),
                         inputs=_sampler(pools, seq_len), extra=extra)
    return model, with_data(model_info(model.config, "causal-lm", "tokens"), target)


register(
    Task(
        NAME,
        "real: reproduce ΔW* of a full fine-tuning of lm-shift's projections on their real inputs; share recovered",
        batches=probe.batches,
        loss=probe.loss,
        evaluate=probe.evaluate,
        build_model=build_model,
        model=MODEL,
        resolve=resolve,
    )
)
