"""The adapter FLOPs a RandLoRA step needs on top of the frozen base matmuls, at the Llama shapes of PERF_NOTES.md.

    python -m bench.tools.adapter_floor

Per shape (in, out, how many per model): the orders the eager impl chooses (`contraction_flops`, the cheaper of
tokens and materialised) and the best of all eight forward/backward orders (`choose_orders` with a dense basis, β = 1).
Prints teraFLOPs per step (2 FLOPs per multiply-add); PERF_NOTES.md v3 divides them by the measured 803 TFLOP/s.
"""
import math

from randlora.functional import contraction_flops
from randlora.layers.randlora_sparse import choose_orders, step_macs

SHAPES = {  # (in, out, how many per model) of the seven projections
    "8B b4": (4096, [(4096, 4096, 64), (4096, 1024, 64), (4096, 14336, 64), (14336, 4096, 32)]),
    "1.1B b8": (8192, [(2048, 2048, 44), (2048, 256, 44), (2048, 5632, 44), (5632, 2048, 22)]),
}


def extra_tf(tokens: int, shapes) -> tuple[float, float]:
    """(adapter TF in the orders the eager impl chooses, in the best of the eight orders)."""
    used = best = 0
    for i, o, count in shapes:
        d, D = min(i, o), max(i, o)
        K = math.ceil(d / 32) * 32  # n·r at r = 32
        used += count * min(contraction_flops(tokens, i, o, K, True).values())
        orders = choose_orders(tokens, d, D, K, 1.0, i <= o, True, True)
        macs = step_macs(tokens, d, D, K, 1.0, i <= o, *orders, True, True) - 2 * tokens * D * d  # minus the base
        best += count * 2 * macs
    return round(used / 1e12, 1), round(best / 1e12, 1)


if __name__ == "__main__":
    for name, (tokens, shapes) in SHAPES.items():
        used, best = extra_tf(tokens, shapes)
        print(f"{name}: adapter {used} TF in the chosen orders, {best} TF in the best of the eight")
