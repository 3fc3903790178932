"""The 2:4 basis products on a GPU, one at a time: PyTorch's semi-structured sparse tensors against dense cuBLAS.

    python -m bench.tools.semi_structured_bench            # from the repo root, on one CUDA GPU, ~20 s

For each materialised-order layer shape of Llama-8B (q/o: D = d = K = 4096; k/v: D = 4096, d = K = 1024; the MLP's
D = 14336, d = K = 4096), with the bases sized for the whole model (D_max = 14336, as `impl: semi_structured`
slices them), prints the median device time (CUDA events, after warm-up) of the products the semi_structured impl
runs on the sparse cores and of the dense products they replace, in bf16:

    build     B @ As (D, d)          dense: torch.mm on the bank's B slice;  2:4: SemiStructuredBasis.mm
    build+W0  W0 + B @ As            dense: one addmm;                       2:4: mm, then an add
    project   Bᵀ @ G (K, d)          dense: torch.mm on B.T;                 2:4: SemiStructuredBasis.t_mm

with the ratio dense / 2:4 (above 1: the sparse cores win) and each product's TFLOP/s (2·D·d·K FLOPs, counted as
dense). What `reports/perf3-h200/` measured for whole steps (0.78×) is the sum of these and of the layer's
handling; this isolates the products.
"""
from __future__ import annotations

import argparse
import sys

import torch

from randlora.bases import BasisBank
from randlora.kernels.semi_structured import SemiStructuredBasis, unavailable_reason

from bench.tools.sparse_gpu_check import time_ms

SHAPES = {"q/o": (4096, 4096), "k/v": (4096, 1024), "mlp": (14336, 4096)}  # name: (D, d); K = d (r 32, full rank)


def rows(device: torch.device, dtype: torch.dtype, r: int = 32):
    bank = BasisBank(r=r, d_max=4096, D_max=14336, basis="sparse_2_4", seed=0)
    A_full, B_full = bank.get(device, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    for name, (D, d) in SHAPES.items():
        _, B = bank.layer_slices(A_full, B_full, d, D)
        K = B.shape[1]
        sparse = SemiStructuredBasis.build(B)
        As = torch.randn(K, d, device=device, dtype=dtype, generator=gen)
        W0 = torch.randn(D, d, device=device, dtype=dtype, generator=gen)
        G = torch.randn(D, d, device=device, dtype=dtype, generator=gen)
        flops = 2 * D * d * K
        pairs = {
            "build": (lambda: torch.mm(B, As), lambda: sparse.mm(As)),
            "build+W0": (lambda: torch.addmm(W0, B, As), lambda: sparse.mm(As) + W0),
            "project": (lambda: torch.mm(B.T, G), lambda: sparse.t_mm(G)),
        }
        for product, (dense_fn, sparse_fn) in pairs.items():
            (dense_ms, _, _), (sparse_ms, _, _) = time_ms(dense_fn, reps=20), time_ms(sparse_fn, reps=20)
            yield name, (D, d, K), product, dense_ms, sparse_ms, flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.semi_structured_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", choices=("bf16", "fp16"), default="bf16", help="compute dtype (default bf16)")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if not torch.cuda.is_available():
        print("this tool times products on a CUDA GPU, and none is visible here.", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    reason = unavailable_reason(device, dtype)
    if reason is not None:
        print(reason, file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.dtype}")
    print(f"{'shape':6} {'(D, d, K)':20} {'product':9} {'dense ms':>9} {'2:4 ms':>9} {'dense/2:4':>10} "
          f"{'dense TF/s':>11} {'2:4 TF/s':>9}")
    for name, shape, product, dense_ms, sparse_ms, flops in rows(device, dtype):
        print(f"{name:6} {str(shape):20} {product:9} {dense_ms:9.3f} {sparse_ms:9.3f} {dense_ms / sparse_ms:10.2f} "
              f"{flops / dense_ms / 1e9:11.0f} {flops / sparse_ms / 1e9:9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
