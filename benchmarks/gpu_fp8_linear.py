"""CUDA GEMV rate of FP8 block-scaled weights against bf16 (Qwen3-4B projection shapes, m = 1).

Every layer's weights are distinct (36 layers' worth, far past the L2), as in a decode step; a
pass calls the native functions directly with prebuilt arguments (asynchronous launches, ~1-2 us
of host time each, under the kernels' time) and is timed to a device synchronize. Prints GB/s of
weight bytes."""

from __future__ import annotations

import argparse
import time

from inference_pio import cuda
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=36)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    if not cuda.is_available():
        raise SystemExit(f"CUDA unavailable: {cuda.unavailable_reason()}")
    h, q, kv, inter = 2560, 4096, 1024, 9728
    shapes = [(q, h), (kv, h), (kv, h), (h, q), (inter, h), (inter, h), (h, inter)]
    dev = "cuda:0"
    ws = []
    for _ in range(args.layers):
        for n, k in shapes:
            w = Tensor.zeros((n, k), DType.bfloat16, dev)
            w8 = Tensor.zeros((n, k), DType.float8_e4m3, dev)
            grid = (-(-n // 128), -(-k // 128))
            s = Tensor.from_list([[0.01] * grid[1]] * grid[0], DType.float32).to(dev)
            ws.append((n, k, w, w8, s))
    xs = {k: Tensor.zeros((1, k), DType.bfloat16, dev) for k in (h, q, inter)}
    ys = {n: Tensor.zeros((1, n), DType.bfloat16, dev) for n in (h, q, kv, inter)}
    f_bf, f_f8 = cuda.function("linear", dev), cuda.function("linear_fp8", dev)
    bf = int(DType.bfloat16)
    calls_bf = [
        (xs[k].data_ptr, w.data_ptr, None, ys[n].data_ptr, 1, n, k, k, n, bf, bf, 0, bf)
        for n, k, w, _, _ in ws
    ]
    calls_f8 = [
        (xs[k].data_ptr, w8.data_ptr, s.data_ptr, None, ys[n].data_ptr, 1, n, k, k, n, 128, 128,
         bf, 0, bf)
        for n, k, _, w8, s in ws
    ]  # fmt: skip

    def run_bf16() -> None:
        for a in calls_bf:
            f_bf(*a)

    def run_fp8() -> None:
        for a in calls_f8:
            f_f8(*a)

    bytes_bf = sum(n * k * 2 for n, k, *_ in ws)
    bytes_f8 = sum(n * k for n, k, *_ in ws)
    print(f"{len(ws)} linears, bf16 {bytes_bf / 1e9:.2f} GB, fp8 {bytes_f8 / 1e9:.2f} GB")
    for name, fn, nbytes in (("bf16", run_bf16, bytes_bf), ("fp8", run_fp8, bytes_f8)) * 2:
        fn()
        cuda.synchronize()
        best = float("inf")
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fn()
            cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        print(f"{name}: {best * 1e3:.3f} ms a pass, {nbytes / best / 1e9:.0f} GB/s")


if __name__ == "__main__":
    main()
