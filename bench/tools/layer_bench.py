"""One adapted linear layer, forward + backward: this library's impls against peft's RandLora and LoRA layers.

    python -m bench.tools.layer_bench --out reports/layers-h200            # on a GPU: the issue's three shapes
    python -m bench.tools.layer_bench --shapes 64x48 --tokens 128 --device cpu --out /tmp/lb   # a quick CPU smoke run

Every variant runs in the same process on the same inputs: time (median of CUDA-event timings after warm-up,
with p10 / p90) and the peak memory a step adds over the memory held before it (weights, input, trainables).
Each variant's output is also checked against a float64 reference of the same adapter with random trainables
(scaled so that ‖ΔW‖ = 0.1 ‖W0‖), so a fast variant that computes something else shows up as a large `rel_err`.
peft runs as `get_peft_model` leaves it (adapter weights in float32 on a bf16 layer) and, as `[cast-to-bf16]`,
cast to the layer's dtype. Results: `layers.json`,
`layers.csv` and a markdown table `layers.md` in `--out`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

import randlora


@dataclass
class Variant:
    name: str
    build: Callable[[nn.Linear], nn.Module]  # wraps a fresh copy of the frozen layer; returns a module y = f(x)
    basis: str = "uniform"


def _ours(impl: str, basis: str, r: int, contraction: str = "auto") -> Callable[[nn.Linear], nn.Module]:
    def build(linear: nn.Linear) -> nn.Module:
        config = randlora.RandLoRAConfig(r=r, impl=impl, basis=basis, contraction=contraction, target_modules=["layer"])
        return randlora.adapt(_Wrap(linear), config)

    return build


def _our_lora(r: int) -> Callable[[nn.Linear], nn.Module]:
    def build(linear: nn.Linear) -> nn.Module:
        return randlora.adapt(_Wrap(linear), randlora.LoRAConfig(r=r, alpha=2 * r, target_modules=["layer"]))

    return build


def _peft(kind: str, r: int, cast: bool = False, **kw) -> Callable[[nn.Linear], nn.Module]:
    """peft as a user gets it: `get_peft_model` on the bf16 layer keeps the adapter weights in float32.

    With `cast`, the adapted model is cast to the layer's dtype afterwards (adapters in bf16 too), which is
    not peft's default but is the fastest way a user can run it.
    """

    def build(linear: nn.Linear) -> nn.Module:
        import peft

        dtype = linear.weight.dtype
        config = (
            peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=["layer"])
            if kind == "lora"
            else peft.RandLoraConfig(r=r, target_modules=["layer"], **kw)
        )
        model = peft.get_peft_model(_Wrap(linear), config)
        return model.to(dtype) if cast else model

    return build


class _Wrap(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.layer = linear

    def forward(self, x):
        return self.layer(x)


def variants(r: int, lora_r: int, with_peft: bool) -> list[Variant]:
    out = [
        Variant("randlora-eager", _ours("eager", "uniform", r)),
        Variant("randlora-eager-tokens", _ours("eager", "uniform", r, "tokens")),
        Variant("randlora-eager-materialized", _ours("eager", "uniform", r, "materialized")),
        Variant("randlora-compiled", _ours("compiled", "uniform", r)),
        Variant("randlora-eager[sparse-basis]", _ours("eager", "sparse", r), "sparse"),
        Variant("randlora-sparse[sparse-basis]", _ours("sparse", "sparse", r), "sparse"),
        Variant("randlora-eager[very_sparse-basis]", _ours("eager", "very_sparse", r), "very_sparse"),
        Variant("randlora-sparse[very_sparse-basis]", _ours("sparse", "very_sparse", r), "very_sparse"),
        Variant(f"lora-r{lora_r}", _our_lora(lora_r)),
    ]
    if with_peft:
        out += [
            Variant(f"peft-randlora-r{r}", _peft("randlora", r)),
            Variant(f"peft-randlora-r{r}[sparse]", _peft("randlora", r, sparse=True), "sparse"),
            Variant(f"peft-randlora-r{r}[cast-to-bf16]", _peft("randlora", r, cast=True)),
            Variant(f"peft-lora-r{lora_r}", _peft("lora", lora_r)),
            Variant(f"peft-lora-r{lora_r}[cast-to-bf16]", _peft("lora", lora_r, cast=True)),
        ]
    return out


def _delta(module: nn.Module) -> torch.Tensor:
    wrapped = module.base_model.model if hasattr(module, "base_model") else module
    layer = wrapped.layer
    return layer.delta_weight() if hasattr(layer, "delta_weight") else layer.get_delta_weight("default")


def _randomize(module: nn.Module, linear: nn.Linear, seed: int, ratio: float = 0.1) -> None:
    """Random trainables, rescaled so that ‖ΔW‖ = ratio · ‖W0‖ for every variant (updates are bilinear in them)."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in module.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=gen).to(p.dtype))
        factor = (ratio * linear.weight.float().norm() / _delta(module).float().norm()).sqrt()
        for p in params:
            p.mul_(factor.to(p.device))


def _rel_err(module: nn.Module, linear: nn.Linear, x: torch.Tensor) -> float:
    """‖y − y_ref‖ / ‖y_ref − x W0ᵀ‖: error relative to the adapter's own contribution, y_ref in float64.

    With ‖ΔW‖ = 0.1 ‖W0‖ (see `_randomize`), bf16 rounding of the output alone gives a few 1e-2 here.
    """
    with torch.no_grad():
        y = module(x).double()
        delta = _delta(module).double()
        w0 = linear.weight.double()
        b = None if linear.bias is None else linear.bias.double()
        base = torch.nn.functional.linear(x.double(), w0, b)
        ref = torch.nn.functional.linear(x.double(), w0 + delta, b)
        return ((y - ref).norm() / (ref - base).norm().clamp_min(1e-30)).item()


def _time_step(module: nn.Module, x: torch.Tensor, g: torch.Tensor, warmup: int, iters: int, device: str) -> dict:
    params = [p for p in module.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(g)

    for _ in range(warmup):
        step()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        for p in params:
            p.grad = None
        x.grad = None
        torch.cuda.synchronize()
        held = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak_extra = torch.cuda.max_memory_allocated() - held
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        peak_extra = None
    times.sort()
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {
        "time_median_s": statistics.median(times),
        "time_p10_s": q[0],
        "time_p90_s": q[-1],
        "peak_extra_bytes": peak_extra,
    }


def run(shapes, tokens: int, r: int, lora_r: int, dtype: torch.dtype, device: str, warmup: int, iters: int, only=None):
    try:
        import peft  # noqa: F401

        with_peft = True
    except ImportError:
        with_peft = False
    rows = []
    for in_f, out_f in shapes:
        torch.manual_seed(0)
        linear = nn.Linear(in_f, out_f, bias=False, device=device, dtype=dtype).requires_grad_(False)
        x = torch.randn(tokens, in_f, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn(tokens, out_f, device=device, dtype=dtype)
        for v in variants(r, lora_r, with_peft):
            if only and not any(o in v.name for o in only):
                continue
            row = {"shape": f"{in_f}x{out_f}", "in_features": in_f, "out_features": out_f, "tokens": tokens,
                   "variant": v.name, "basis": v.basis, "dtype": str(dtype).removeprefix("torch.")}
            try:
                module = v.build(copy.deepcopy(linear))
                _randomize(module, linear, seed=1)
                trainables = [p for p in module.parameters() if p.requires_grad]
                row["trainable_params"] = sum(p.numel() for p in trainables)
                row["trainable_dtype"] = str(trainables[0].dtype).removeprefix("torch.")
                row["rel_err"] = _rel_err(module, linear, x.detach()[: min(tokens, 256)])
                row.update(_time_step(module, x, g, warmup, iters, device))
                row["status"] = "ok"
            except torch.cuda.OutOfMemoryError as exc:
                row.update(status="oom", reason=str(exc).splitlines()[0])
            except Exception as exc:  # a failed variant is a result, not the end of the run
                row.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:500])
            finally:
                module = None
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(_fmt(row), flush=True)
    return rows


def _fmt(row: dict) -> str:
    if row.get("status") != "ok":
        return f"{row['shape']:>12} {row['variant']:<36} {row.get('status')}: {row.get('reason', '')}"
    peak = row["peak_extra_bytes"]
    peak_s = "-" if peak is None else f"{peak / 2**20:9.1f} MiB"
    return (f"{row['shape']:>12} {row['variant']:<36} {row['time_median_s'] * 1e3:9.3f} ms  peak+ {peak_s}  "
            f"rel_err {row['rel_err']:.1e}")


def _markdown(rows: list[dict]) -> str:
    lines = []
    for shape in dict.fromkeys(r["shape"] for r in rows):
        group = [r for r in rows if r["shape"] == shape]
        ref = {r["variant"]: r for r in group if r.get("status") == "ok"}
        peft_rl = next((r for n, r in ref.items() if n.startswith("peft-randlora") and "[" not in n), None)
        lines += [f"\n### {shape} (in x out), {group[0]['tokens']} tokens, {group[0]['dtype']}\n",
                  "| variant | fwd+bwd ms (median) | p10-p90 ms | speed-up vs peft RandLora | peak extra MiB | rel. err |",
                  "|---|---|---|---|---|---|"]
        for r in group:
            if r.get("status") != "ok":
                lines.append(f"| {r['variant']} | {r['status']}: {r.get('reason', '')[:80]} | | | | |")
                continue
            speed = f"{peft_rl['time_median_s'] / r['time_median_s']:.2f}x" if peft_rl else "-"
            peak = "-" if r["peak_extra_bytes"] is None else f"{r['peak_extra_bytes'] / 2**20:.1f}"
            lines.append(f"| {r['variant']} | {r['time_median_s'] * 1e3:.3f} | {r['time_p10_s'] * 1e3:.3f}-"
                         f"{r['time_p90_s'] * 1e3:.3f} | {speed} | {peak} | {r['rel_err']:.1e} |")
    return "\n".join(lines) + "\n"


def _env(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "argv": sys.argv}
    try:
        import peft

        env["peft"] = peft.__version__
    except ImportError:
        pass
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.layer_bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="4096x4096,4096x14336,14336x4096",
                        help="comma-separated IN x OUT shapes (default: the issue's three)")
    parser.add_argument("--tokens", type=int, default=4096, help="tokens per step (default 4096)")
    parser.add_argument("--r", type=int, default=32, help="RandLoRA basis rank (default 32, peft's default)")
    parser.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--only", default="", help="comma-separated substrings: run only variants whose name has one")
    parser.add_argument("--out", required=True, help="folder for layers.json / layers.csv / layers.md")
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        parser.error(f"--shapes {args.shapes!r} is not a list like 4096x4096,4096x14336")
    rows = run(shapes, args.tokens, args.r, args.lora_r, getattr(torch, args.dtype), args.device, args.warmup,
               args.iters, [o for o in args.only.split(",") if o])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "layers.json", json.dumps({"env": _env(args.device), "rows": rows}, indent=1))
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / ".layers.csv.tmp", index=False)
    os.replace(out / ".layers.csv.tmp", out / "layers.csv")
    _write_atomic(out / "layers.md", _markdown(rows))
    print(_markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
