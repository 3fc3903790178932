"""GPU check of RandLoRA's sparse impl: parity with eager, and forward+backward time of one layer (bf16).

    python -m bench.tools.sparse_gpu_check                 # from the repo root, on one CUDA GPU, ~1 minute
    python -m bench.tools.sparse_gpu_check --bank model    # bases sized for Llama-8B-like models (D_max = 14336)

For each basis (sparse, very_sparse), rank (16, 32) and layer shape in -> out (4096->4096, 4096->14336,
14336->4096), with T tokens, fresh random λ, γ, x and dL/dy:
  err     max relative error (y, dL/dx, dL/dλ, dL/dγ) of eager-bf16 and sparse-bf16 against eager in float32;
          `ok` when sparse's error is within 2x eager's + 1e-3.
  time    median device time (CUDA events, warm-up excluded, p20-p80 in brackets) of y = layer(x); y.backward(dy)
          for the eager layer and the sparse layer (engine chosen by density), then the sparse function with each
          engine forced (`dense`: int8 signs decoded for cuBLAS; `gather`: the Triton kernel over non-zeros).
  cost    the calibration of kernels/ternary.py's GATHER_COST: time of the product W0 + s·B As with the gather
          kernel over its time with cuBLAS on a dense bf16 B, divided by the density (B As and Bᵀ Gᵀ).
`--bank layer` (default) sizes the shared bases to the layer itself, so very_sparse's density is 2/sqrt(D) of that
layer (3.1 % at D = 4096, 1.7 % at 14336); `--bank model` sizes them to (d, D) = (4096, 14336) for every shape.
Exit status 1 when any parity check fails.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from randlora.bases import BasisBank  # noqa: E402
from randlora.config import RandLoRAConfig  # noqa: E402
from randlora.functional import randlora_linear  # noqa: E402
from randlora.kernels import ternary  # noqa: E402
from randlora.kernels.ternary import TernaryMatrix  # noqa: E402
from randlora.layers.randlora_eager import RandLoRALinear  # noqa: E402
from randlora.layers.randlora_sparse import SparseRandLoRALinear, choose_orders, sparse_randlora_linear  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]  # (in, out)
RANKS = (16, 32)
BASES = ("sparse", "very_sparse")
MODEL_BANK = (4096, 14336)  # (d_max, D_max) of Llama-3-8B's projections


def time_ms(fn, grads=(), warmup: int = 3, reps: int = 15) -> tuple[float, float, float]:
    """(median, p20, p80) of fn()'s device time in ms: one pair of CUDA events per call, grads cleared before each."""
    def clear():
        for t in grads:
            t.grad = None

    for _ in range(warmup):
        clear()
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    torch.cuda.synchronize()
    for start, end in events:
        clear()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return statistics.median(times), times[reps // 5], times[(4 * reps) // 5]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.float()
    return ((got.float() - want).norm() / want.norm()).item()


def forward_backward(fn, inputs, dy):
    """(y, grads of `inputs`) of one call, inputs' grads reset."""
    for t in inputs:
        t.grad = None
    y = fn()
    y.backward(dy)
    return [y.detach()] + [t.grad.detach().clone() for t in inputs]


def plan_name(layer: SparseRandLoRALinear, x: torch.Tensor, B: TernaryMatrix) -> str:
    """fwd / dL/dx / dL/dAs orders the sparse function takes for this call."""
    materialize, rebuild, weight_route = choose_orders(
        x.shape[0], layer.d, layer.D, layer.num_bases * layer.r, B.cost_factor,
        layer.in_features <= layer.out_features, True, True,
    )
    return f"{'mat' if materialize else 'tok'}/{'rebuild' if rebuild else 'tok'}/{'G' if weight_route else 'tok'}"


def run_cell(in_f: int, out_f: int, r: int, basis: str, tokens: int, bank_dims, device) -> dict:
    d, D = min(in_f, out_f), max(in_f, out_f)
    d_max, D_max = bank_dims or (d, D)
    bank = BasisBank(r=r, d_max=d_max, D_max=D_max, basis=basis, seed=0)
    config = RandLoRAConfig(r=r, basis=basis, impl="sparse")
    base = torch.nn.Linear(in_f, out_f, bias=False, device=device, dtype=torch.bfloat16).requires_grad_(False)
    eager, sparse = RandLoRALinear(base, config, bank), SparseRandLoRALinear(base, config, bank)
    gen = torch.Generator(device=device).manual_seed(in_f * 7 + out_f + r)
    with torch.no_grad():
        lam = 0.1 * torch.randn(eager.randlora_lambda.shape, generator=gen, device=device)
        gam = (1 + 0.5 * torch.randn(eager.randlora_gamma.shape, generator=gen, device=device)) / d
        for layer in (eager, sparse):
            layer.randlora_lambda.copy_(lam)
            layer.randlora_gamma.copy_(gam)
    x = torch.randn(tokens, in_f, generator=gen, device=device, dtype=torch.bfloat16).requires_grad_(True)
    dy = torch.randn(tokens, out_f, generator=gen, device=device, dtype=torch.bfloat16)

    # float32 reference: the eager function on float32 copies of the bank's originals (not cached in the bank)
    A32, B32 = (t.to(device) for t in bank.layer_slices(bank.A, bank.B, d, D))
    x32, lam32, gam32 = (t.detach().float().clone().requires_grad_(True) for t in (x, lam, gam))
    ref = forward_backward(
        lambda: randlora_linear(x32, base.weight.float(), None, A32, B32, lam32, gam32, config.scaling, False),
        (x32, lam32, gam32), dy.float(),
    )
    errors = {}
    for name, layer in (("eager", eager), ("sparse", sparse)):
        got = forward_backward(lambda: layer(x), (x, layer.randlora_lambda, layer.randlora_gamma), dy)
        errors[name] = max(rel_err(a, b) for a, b in zip(got, ref))

    row = {"basis": basis, "r": r, "shape": f"{in_f}->{out_f}", "err": errors}
    _, B = sparse.bases(device, torch.bfloat16)
    row.update(density=B.density, engine=B.engine, plan=plan_name(sparse, x, B))
    for name, layer in (("eager", eager), ("sparse", sparse)):
        row[name] = time_ms(lambda: layer(x).backward(dy), (x, layer.randlora_lambda, layer.randlora_gamma))

    # the sparse function with each engine forced, and the single products for GATHER_COST
    signs, scale = B.signs, B.scale
    A = sparse.bases(device, torch.bfloat16)[0]
    lam16, gam16 = (t.detach().bfloat16().requires_grad_(True) for t in (lam, gam))
    K = signs.shape[1]
    engines = ("dense", "gather") if basis == "very_sparse" else ("dense",)
    ops = {e: TernaryMatrix.build(signs, scale, e) for e in ("dense", "gather")}
    for engine in engines:
        op = ops[engine]
        materialize = choose_orders(tokens, d, D, K, op.cost_factor, in_f <= out_f, True, True)[0]

        def step():
            y = sparse_randlora_linear(x, base.weight, None, A, op, lam16, gam16, config.scaling, materialize)
            y.backward(dy)

        row[f"fn_{engine}"] = time_ms(step, (x, lam16, gam16))
    with torch.no_grad():
        As = (lam16.detach().unsqueeze(-1) * A.unsqueeze(1) * gam16.detach().unsqueeze(0)).reshape(K, d)
        W_Dd = base.weight if in_f <= out_f else base.weight.T
        B16 = signs.to(torch.bfloat16) * scale
        gT = dy.T.contiguous() if in_f <= out_f else x.detach().T.contiguous()  # (D, T): what Bᵀ meets
        t_cublas = time_ms(lambda: torch.addmm(W_Dd, B16, As, alpha=config.scaling))[0]
        t_gather = time_ms(lambda: ops["gather"].mm(As, config.scaling, add=W_Dd))[0]
        t_cublas_t = time_ms(lambda: B16.T @ gT)[0]
        t_gather_t = time_ms(lambda: ops["gather"].mm(gT, 1.0, transpose=True))[0]
    row["cost"] = (t_gather / t_cublas / B.density, t_gather_t / t_cublas_t / B.density)
    row["product_ms"] = (t_cublas, t_gather, t_cublas_t, t_gather_t)
    return row


def sweep_gather_tiles(tokens: int, device, d: int = 4096, D: int = 14336) -> None:
    """Median ms of the gather kernel's two products on very_sparse (r=32, d->D) per tile, against cuBLAS."""
    bank = BasisBank(r=32, d_max=d, D_max=D, basis="very_sparse", seed=0)
    signs = bank.B_sign.to(device)
    op = TernaryMatrix.build(signs, bank.ternary_scale, "gather")
    gen = torch.Generator(device=device).manual_seed(0)
    As = torch.randn(signs.shape[1], d, generator=gen, device=device, dtype=torch.bfloat16)
    gT = torch.randn(signs.shape[0], tokens, generator=gen, device=device, dtype=torch.bfloat16)
    B16 = signs.to(torch.bfloat16)
    print(f"gather tiles, very_sparse {d}->{D} (rho {op.density:.2%}): "
          f"cuBLAS B@As {time_ms(lambda: B16 @ As)[0]:.3f} ms, Bt@Gt {time_ms(lambda: B16.T @ gT)[0]:.3f} ms")
    for tile in ((32, 64, 4, 4), (16, 64, 8, 4), (64, 64, 2, 8), (32, 128, 4, 8), (16, 32, 16, 4)):
        t_rows = time_ms(lambda: ternary.ell_matmul(op.rows, As, 1.0, tile=tile))[0]
        t_cols = time_ms(lambda: ternary.ell_matmul(op.cols, gT, 1.0, tile=tile))[0]
        print(f"  tile (BLOCK_M, BLOCK_N, SLOTS, warps) {tile}: B@As {t_rows:.3f} ms, Bt@Gt {t_cols:.3f} ms")


def fmt_t(t) -> str:
    return f"{t[0]:6.2f} [{t[1]:.2f}-{t[2]:.2f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", choices=("layer", "model"), default="layer")
    parser.add_argument("--tokens", type=int, default=4096)
    args = parser.parse_args()
    if not torch.cuda.is_available() or not ternary.triton_available():
        print("needs a CUDA GPU and triton", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    free, total = torch.cuda.mem_get_info()
    import triton

    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"CUDA {torch.version.cuda} | GATHER_COST {ternary.GATHER_COST} | T {args.tokens} | bank {args.bank}")
    if total - free > 2**30:
        print(f"WARNING: the GPU is not clean, {(total - free) / 2**30:.1f} GiB in use by others before start")
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
    started = time.perf_counter()
    header = (f"{'basis':11} {'r':>2} {'in->out':11} {'rho':>6} {'engine':6} {'plan':15} {'err eager':>9} "
              f"{'err sparse':>10} {'':3}| {'eager ms':>19} {'sparse ms':>19} {'x':>5} {'tok/s sparse':>12} | "
              f"{'fn dense ms':>19} {'fn gather ms':>19} | {'cost B@As':>9} {'cost BtGt':>9}")
    print(header)
    print("-" * len(header))
    failed, costs = 0, []
    for basis in BASES:
        for r in RANKS:
            for in_f, out_f in SHAPES:
                row = run_cell(in_f, out_f, r, basis, args.tokens, MODEL_BANK if args.bank == "model" else None, device)
                ok = row["err"]["sparse"] <= 2 * row["err"]["eager"] + 1e-3
                failed += not ok
                if basis == "very_sparse":
                    costs.extend(row["cost"])
                gather = fmt_t(row["fn_gather"]) if "fn_gather" in row else f"{'-':>19}"
                print(f"{basis:11} {r:>2} {row['shape']:11} {row['density']:6.2%} {row['engine']:6} {row['plan']:15} "
                      f"{row['err']['eager']:9.2e} {row['err']['sparse']:10.2e} {'ok' if ok else 'BAD':3}| "
                      f"{fmt_t(row['eager'])} {fmt_t(row['sparse'])} {row['eager'][0] / row['sparse'][0]:5.2f} "
                      f"{args.tokens / row['sparse'][0] * 1e3:12.0f} | {fmt_t(row['fn_dense'])} {gather} | "
                      f"{row['cost'][0]:9.1f} {row['cost'][1]:9.1f}", flush=True)
                torch.cuda.empty_cache()
    sweep_gather_tiles(args.tokens, device)
    print(f"GATHER_COST measured on very_sparse: median {statistics.median(costs):.1f} "
          f"(min {min(costs):.1f}, max {max(costs):.1f}); the gather engine is chosen while GATHER_COST * rho < 1")
    print(f"{failed} parity failure(s); {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
