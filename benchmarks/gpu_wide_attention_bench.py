"""Decode attention of wide heads (GLM-4.7-Flash's absorbed MLA: one kv head, 576-value key rows
whose first 512 are the values, 20 query heads) and of Qwen3-4B's heads, host-timed over 300
back-to-back calls: ``toc_attention_dev`` (the length read on the device) with workspaces for 1 to
64 key slices, and ``toc_attention`` with the length on the host. Wide heads twice: values in the
key rows (absorbed MLA: the tensor-core kernel) and apart (the CUDA-core wide-head kernel).

    python benchmarks/gpu_wide_attention_bench.py
"""

from __future__ import annotations

import time
from typing import Any


def bench(fn: Any, args: tuple[Any, ...], n: int = 300) -> float:
    """Microseconds a call of ``fn(*args)`` (a CUDA library function) takes, back to back."""
    from inference_pio import cuda

    cuda.check(fn(*args), "call")
    cuda.synchronize("cuda:0")
    t = time.perf_counter()
    for _ in range(n):
        fn(*args)
    cuda.synchronize("cuda:0")
    return (time.perf_counter() - t) / n * 1e6


def main() -> int:
    import torch

    from inference_pio import cuda
    from inference_pio.dtypes import DType
    from inference_pio.tensor import Tensor, tensor
    from inference_pio.testing import torch_bridge as tb

    dev, lib, bf = "cuda:0", cuda.lib(), int(DType.bfloat16)
    cols = ("heads", 5), ("kv", 3), ("dq", 4), ("dv", 4), ("values", 8), ("keys", 5), ("slices", 7)
    print(" ".join(f"{c:>{w}}" for c, w in cols), f"{'us':>8}")
    for nh, nkv, dq, dv, cap in ((20, 1, 576, 512, 4096), (32, 8, 128, 128, 4096)):
        for layout in ("in keys", "apart") if dq != dv else ("apart",):
            for past in (40, 500, 4000):
                q = tb.to_device(torch.randn(1, nh * dq).bfloat16(), dev)
                kc = tb.to_device(torch.randn(nkv, cap, dq).bfloat16(), dev)
                if layout == "in keys":  # absorbed MLA: the values are the keys' leading columns
                    vc, vstrides = kc, (cap * dq, dq)
                else:
                    vc = tb.to_device(torch.randn(nkv, cap, dv).bfloat16(), dev)
                    vstrides = (cap * dv, dv)
                out = Tensor.empty((1, nh * dv), DType.bfloat16, dev)
                pos = tensor([past], DType.int32, dev)
                head = (q.data_ptr, kc.data_ptr, vc.data_ptr, out.data_ptr, 1, nh, nkv, dq, dv)
                lds = (nh * dq, nh * dv)
                strides = (cap * dq, dq, *vstrides)
                row = f"{nh:>5} {nkv:>3} {dq:>4} {dv:>4} {layout:>8} {past + 1:>5}"
                for splits in (1, 4, 16, 32, 64):
                    ws = Tensor.empty((splits * nh * (dv + 2),), DType.float32, dev)
                    tail = (pos.data_ptr, dq**-0.5, bf, bf, ws.data_ptr, ws.numel)
                    us = bench(lib.toc_attention_dev, (*head, *lds, cap, *strides, *tail))
                    print(f"{row} {splits:>7} {us:>8.1f}")
                rest = (past + 1, *strides, past, 1, None, 0, dq**-0.5, bf, bf)
                us = bench(lib.toc_attention, (*head, *lds, *rest))
                print(f"{row} {'host':>7} {us:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
