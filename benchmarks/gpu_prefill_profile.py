"""Where a CUDA prefill spends its time: one 2048-token prefill of a synthetic real-size model,
with wall times; with --ops the GPU time of each backend op (every call of one prefill recorded,
then replayed ten times in a captured graph) and the host time of the forward call; with
--kernels a per-kernel summary (torch profiler, CUPTI).

    PYTHONPATH=core:plugins/qwen3_4b_instruct_2507:benchmarks \\
      python benchmarks/gpu_prefill_profile.py 4b [2048] [--ops] [--kernels]
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmark_gpu import (
    DEV,
    build_ours,
    op_gpu_times,
    prefill_seconds,
    real_config,
    recorded_calls,
)

from inference_pio import cuda


def op_times(model: Any, tokens: list[int]) -> None:
    """Prints the GPU time of every backend op of one prefill, summed per op name."""
    cache = model.new_cache(len(tokens) + 1)
    with recorded_calls() as calls:
        t0 = time.perf_counter()
        model.forward([(tokens, cache)])
        host = time.perf_counter() - t0
    cuda.synchronize(DEV)
    ops = op_gpu_times(calls)
    print(
        f"{len(calls)} calls; host time of the forward call {host * 1e3:.1f} ms; "
        f"GPU time summed {sum(t for _, _, t in ops) * 1e3:.2f} ms"
    )
    for op, n, t in ops:
        print(f"  {op:28s} x{n:<4d} {t * 1e3:8.3f} ms {t / n * 1e6:9.1f} us each")


name = sys.argv[1] if len(sys.argv) > 1 else "4b"
n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 2048
model, _ = build_ours(real_config(name))
tokens = [1000 + (i * 7919) % 90000 for i in range(n)]
for _ in range(3):
    print(f"prefill {n}: {prefill_seconds(model, tokens) * 1e3:.1f} ms")

if "--ops" in sys.argv:
    op_times(model, tokens)

if "--kernels" in sys.argv:
    # every CUDA kernel of the process (ours included), through CUPTI via torch's profiler
    import torch
    from torch.profiler import ProfilerActivity, profile

    cache = model.new_cache(n + 1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        (lg,) = model.forward([(tokens, cache)])
        lg.to("cpu")
        torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=20, max_name_column_width=60)
    )
