"""Prefill attention alone on a CUDA device: Inference-PIO's flash kernels (Hopper's wgmma one
and the mma.sync one, INFERENCE_PIO_CUDA_FLASH_WGMMA=0) against torch's SDPA in the same process;
causal, GQA, bf16; ms per call (median of five runs of ten calls) and TFLOP/s.

    PYTHONPATH=core python benchmarks/gpu_flash_bench.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from inference_pio import cuda, ops
from inference_pio.dtypes import DType
from inference_pio.tensor import Tensor

DEV = "cuda:0"


def ms_per_call(fn: Callable[[], object], sync: Callable[[], None], n: int = 10) -> float:
    fn()
    sync()
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        runs.append((time.perf_counter() - t0) / n * 1e3)
    return statistics.median(runs)


def row(nh: int, nkv: int, hd: int, n: int) -> list[float]:
    """ms per call of the wgmma kernel, the mma.sync kernel and torch's SDPA for one shape."""
    q = Tensor.zeros((n, nh, hd), DType.bfloat16, DEV)
    kc = Tensor.zeros((nkv, n, hd), DType.bfloat16, DEV)
    vc = Tensor.zeros((nkv, n, hd), DType.bfloat16, DEV)
    times = []
    for flag in ("1", "0"):
        os.environ["INFERENCE_PIO_CUDA_FLASH_WGMMA"] = flag
        times.append(
            ms_per_call(
                lambda: ops.attention(q, kc, vc, kv_len=n, q_pos=0), lambda: cuda.synchronize(DEV)
            )
        )
    os.environ.pop("INFERENCE_PIO_CUDA_FLASH_WGMMA")
    tq, tk, tv = (
        torch.randn(1, h, n, hd, device="cuda", dtype=torch.bfloat16) for h in (nh, nkv, nkv)
    )
    sdpa = F.scaled_dot_product_attention
    times.append(
        ms_per_call(
            lambda: sdpa(tq, tk, tv, is_causal=True, enable_gqa=True), torch.cuda.synchronize
        )
    )
    return times


def main() -> None:
    shapes = [(32, 8, 128)] if "--quick" in sys.argv else [(32, 8, 128), (16, 8, 128), (16, 4, 64)]
    print(f"device: {cuda.device_info(DEV)['name']}")
    cols = ("wgmma ms", "TFLOP/s", "mma ms", "TFLOP/s", "torch ms", "TFLOP/s")
    print(f"{'shape':30s} " + " ".join(f"{c:>9s}" for c in cols))
    for nh, nkv, hd in shapes:
        for n in (2048, 8192):
            flop = 4 * n * n * hd * nh / 2  # causal: half of QK^T and PV
            cells = " ".join(f"{t:9.3f} {flop / t / 1e9:9.0f}" for t in row(nh, nkv, hd, n))
            print(f"q heads {nh:2d} kv {nkv} hd {hd:3d} n {n:5d}  {cells}")


if __name__ == "__main__":
    main()
