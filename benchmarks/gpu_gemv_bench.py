"""One-row GEMVs on the GPU: the scalar decode GEMV (``toc_gemv_fused``, one warp per output row)
against the tensor-core one (``toc_linear`` at one row, ``gemv_mma_kernel``) on the decode shapes
of Qwen3-Coder-30B-A3B and Qwen3-4B. Each call is captured 200 times in a CUDA graph and replayed;
us a call (best of 5 replays) and the ratio.

    PYTHONPATH=core python benchmarks/gpu_gemv_bench.py

The scalar column runs with an RMSNorm prologue (``toc_gemv_fused`` now sends plain rows without
one to the tensor-core GEMV), so it times the scalar kernel with its norm against the bare
tensor-core products.
"""

from __future__ import annotations

import ctypes
import sys
import time
from collections.abc import Callable

from inference_pio import cuda
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

DEV = "cuda:0"
SHAPES = [
    ("30B-A3B qkv", 5120, 2048),
    ("30B-A3B o_proj", 2048, 4096),
    ("30B-A3B router", 128, 2048),
    ("30B-A3B experts' down x8, as one", 16384, 768),
    ("30B-A3B experts' gate|up x8, as one", 12288, 2048),
    ("30B-A3B LM head", 151936, 2048),
    ("4B qkv", 6144, 2560),
    ("4B down", 2560, 9728),
]


def replay_us(call: Callable[[], None], reps: int = 200) -> float:
    """us per call of ``call`` captured ``reps`` times in one graph (best of 5 replays)."""
    lib = cuda.lib()
    cuda.check(lib.toc_graph_begin(), "toc_graph_begin")
    for _ in range(reps):
        call()
    ex = ctypes.c_void_p()
    cuda.check(lib.toc_graph_end(ctypes.byref(ex)), "toc_graph_end")
    try:
        cuda.check(lib.toc_graph_launch(ex, 1), "toc_graph_launch")
        cuda.synchronize(DEV)
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            cuda.check(lib.toc_graph_launch(ex, 1), "toc_graph_launch")
            cuda.synchronize(DEV)
            best = min(best, (time.perf_counter() - t) / reps * 1e6)
        return best
    finally:
        lib.toc_graph_destroy(ex)


def time_shape(n: int, k: int) -> tuple[float, float]:
    """us a call of the scalar GEMV (with its RMSNorm prologue) and the tensor-core one, n x k."""
    lib, bf = cuda.lib(), int(DType.bfloat16)
    w = Tensor.empty((n, k), DType.bfloat16, DEV)
    x = Tensor.empty((1, k), DType.bfloat16, DEV)
    y = Tensor.empty((1, n), DType.bfloat16, DEV)
    nw = Tensor.empty((k,), DType.bfloat16, DEV)
    for t, seed, mean, std in ((w, 1, 0.0, 0.02), (x, 2, 0.0, 1.0), (nw, 3, 1.0, 0.1)):
        cuda.check(lib.toc_fill_random(t.data_ptr, t.numel, bf, seed, mean, std, 0), "fill")

    def scalar() -> None:  # the RMSNorm keeps it on the scalar kernel whatever the build
        cuda.check(
            lib.toc_gemv_fused(
                x.data_ptr, k, 1, nw.data_ptr, bf, 1e-6, w.data_ptr, n, None, 0, None, 0, k,
                None, 0, 0, y.data_ptr, n, bf, None,
            ),
            "toc_gemv_fused",
        )  # fmt: skip

    def mma() -> None:
        cuda.check(
            lib.toc_linear(x.data_ptr, w.data_ptr, None, y.data_ptr, 1, n, k, k, n, bf, bf, 0, bf),
            "toc_linear",
        )

    return replay_us(scalar), replay_us(mma)


def main() -> int:
    if not cuda.is_available():
        print(f"CUDA unavailable: {cuda.unavailable_reason()}")
        return 1
    print(f"{'shape':38s} {'MB':>7s} {'scalar us':>10s} {'mma us':>8s} {'x':>6s}")
    for name, n, k in SHAPES:
        s, m = time_shape(n, k)
        print(f"{name:38s} {n * k * 2 / 1e6:7.1f} {s:10.2f} {m:8.2f} {s / m:6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
