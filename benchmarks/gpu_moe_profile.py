"""Where the Qwen3-MoE decode step's time goes on the GPU: the graph step's replay time with each
kernel left out, per layer (the tokens are then wrong; only the time counts).

Random bf16 weights with Qwen3-Coder-30B-A3B's shapes, ``layers`` of them (default 12). The MLP
kernels are left out one by one from the five-kernel MLP (leaving out any of them selects it),
against that step in full; then the one-launch MLP (``toc_moe_step``, the default) in full and
without it.

    python benchmarks/gpu_moe_profile.py [layers]
"""

from __future__ import annotations

import os
import sys
import time

from gpu_moe_bench import build_ours, config

from inference_pio import cuda
from inference_pio.nn.cuda_graph import CudaGraphDecoder

KERNELS = (
    "qkv",
    "qk_rope_append",
    "attention_decode",
    "o_proj",
    "moe_router",
    "moe_route",
    "moe_gate_up",
    "moe_down",
    "moe_combine",
    "lm_head",
)
FIVE = ("moe_router", "moe_route", "moe_gate_up", "moe_down", "moe_combine")


def ms_per_token(runner: CudaGraphDecoder) -> float:
    """Best of three runs of 96 greedy replays after a 32-token context."""
    runner.greedy(5, 32, 8)
    cuda.synchronize("cuda:0")
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for c in range(3):
            runner.greedy(5, 32 + 32 * c, 32)
        cuda.synchronize("cuda:0")
        best = min(best, (time.perf_counter() - t0) / 96)
    return best * 1e3


def main() -> int:
    layers = int(sys.argv[1]) if len(sys.argv) > 1 else 12
    if not cuda.is_available():
        print(f"skipped: CUDA unavailable: {cuda.unavailable_reason()}")
        return 0
    model = build_ours(config(layers))
    one = ms_per_token(CudaGraphDecoder(model, 256))
    # the five-kernel MLP in full, and every kernel left out one by one against it
    os.environ["INFERENCE_PIO_CUDA_MOE_STEP"] = "0"
    full = ms_per_token(CudaGraphDecoder(model, 256))
    print(f"{layers} layers, five-kernel MLP: {full:.3f} ms ({full / layers * 1e3:.1f} us a layer)")
    for name in KERNELS:
        t = ms_per_token(CudaGraphDecoder(model, 256, skip=[name]))
        print(f"  without {name:18} {t:.3f} ms -> {(full - t) / layers * 1e3:6.2f} us a layer")
    del os.environ["INFERENCE_PIO_CUDA_MOE_STEP"]
    t = ms_per_token(CudaGraphDecoder(model, 256, skip=["moe_step"]))
    print(f"{layers} layers, one-launch MLP: {one:.3f} ms ({one / layers * 1e3:.1f} us a layer)")
    print(f"  without {'moe_step':18} {t:.3f} ms -> {(one - t) / layers * 1e3:6.2f} us a layer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
