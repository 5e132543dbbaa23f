"""CPU benchmark: to_linear on a bf16 weight vs to_linear_fp8 on its fp8 block-scaled version.

Qwen3-4B projection shapes (n, k) at m = 1 (decode) and m = 128 (prefill), bf16 x and y. Reports
the best-of-N time per call, GB/s of weight bytes (n*k*2 for bf16, n*k + scales for fp8) and the
bf16 / fp8 time ratio (> 1: fp8 faster). Random weights: speed does not depend on the values.

    PYTHONPATH=core python benchmarks/fp8_linear.py [--threads N] [--reps R] [--m 1,128]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import time
from collections.abc import Callable

from inference_pio import ops
from inference_pio._native import check, lib
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

SHAPES = ((4096, 2560), (9728, 2560), (2560, 9728))


def random(shape: tuple[int, ...], dtype: DType, seed: int, std: float = 1.0) -> Tensor:
    t = Tensor.empty(shape, dtype)
    fill = lib().to_fill_random
    fill.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int,
        ctypes.c_uint64,
        ctypes.c_float,
        ctypes.c_float,
        ctypes.c_int,
    ]
    check(fill(t.data_ptr, t.numel, int(dtype), seed, 0.0, std, 0), "to_fill_random")
    return t


def best_ms(fn: Callable[[], object], reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=0, help="0: the library default")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--m", default="1,128", help="rows of x, comma-separated")
    args = p.parse_args()
    ops.set_num_threads(args.threads)
    ms_list = [int(v) for v in args.m.split(",")]
    print(f"threads {ops.get_num_threads()}, best of {args.reps}")
    head = f"{'n':>5} {'k':>5} {'m':>4} | {'bf16 ms':>8} {'GB/s':>6} | {'fp8 ms':>8} {'GB/s':>6}"
    print(head + f" | {'bf16/fp8':>8}")
    for n, k in SHAPES:
        w = random((n, k), DType.bfloat16, seed=n + k, std=0.02)
        w8, scale = ops.quantize_fp8(w)
        fp8_bytes = n * k + scale.nbytes
        for m in ms_list:
            x = random((m, k), DType.bfloat16, seed=m)
            y = Tensor.empty((m, n), DType.bfloat16)
            t_bf = best_ms(functools.partial(ops.linear, x, w, out=y), args.reps)
            t_f8 = best_ms(functools.partial(ops.linear_fp8, x, w8, scale, out=y), args.reps)
            print(
                f"{n:>5} {k:>5} {m:>4} | {t_bf:8.3f} {n * k * 2 / t_bf / 1e6:6.1f} | "
                f"{t_f8:8.3f} {fp8_bytes / t_f8 / 1e6:6.1f} | {t_bf / t_f8:8.2f}"
            )


if __name__ == "__main__":
    main()
