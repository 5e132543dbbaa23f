"""Where a CUDA prefill spends its time: one 2048-token prefill of a synthetic real-size model,
with wall times; with --ops the GPU time of each backend op (every call of one prefill recorded,
then replayed ten times in a captured graph) and the host time of the forward call; with
--kernels a per-kernel summary (torch profiler, CUPTI).

    PYTHONPATH=core:plugins/qwen3_4b_instruct_2507:benchmarks \\
      python benchmarks/gpu_prefill_profile.py 4b [2048] [--ops] [--kernels]
"""

from __future__ import annotations

import collections
import ctypes
import sys
import time
from typing import Any

from benchmark_gpu import DEV, build_ours, prefill_seconds, real_config

from inference_pio import cuda
from inference_pio.backend import Backend


def op_times(model: Any, tokens: list[int]) -> None:
    """Prints the GPU time of every backend op of one prefill, summed per op name."""
    lib = cuda.lib()
    orig = Backend.call
    calls: list[tuple[Backend, str, tuple[Any, ...]]] = []

    def spy(self: Backend, op: str, *args: Any) -> None:
        calls.append((self, op, args))
        orig(self, op, *args)

    cache = model.new_cache(len(tokens) + 1)
    Backend.call = spy  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        model.forward([(tokens, cache)])
        host = time.perf_counter() - t0
        cuda.synchronize(DEV)
    finally:
        Backend.call = orig  # type: ignore[method-assign]
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    for be, op, args in calls:
        try:  # ten calls in one graph, replayed three times
            cuda.check(lib.toc_graph_begin(), "toc_graph_begin")
            for _ in range(10):
                orig(be, op, *args)
            graph = ctypes.c_void_p()
            cuda.check(lib.toc_graph_end(ctypes.byref(graph)), "toc_graph_end")
            cuda.check(lib.toc_graph_launch(graph.value, 1), "toc_graph_launch")
            cuda.synchronize(DEV)
            t0 = time.perf_counter()
            cuda.check(lib.toc_graph_launch(graph.value, 3), "toc_graph_launch")
            cuda.synchronize(DEV)
            dt = (time.perf_counter() - t0) / 30
            lib.toc_graph_destroy(graph.value)
        except Exception:  # a call that cannot be captured: timed alone
            lib.toc_graph_abort()
            cuda.synchronize(DEV)
            t0 = time.perf_counter()
            for _ in range(5):
                orig(be, op, *args)
            cuda.synchronize(DEV)
            dt = (time.perf_counter() - t0) / 5
        total[op] += dt
        count[op] += 1
    print(
        f"{len(calls)} calls; host time of the forward call {host * 1e3:.1f} ms; "
        f"GPU time summed {sum(total.values()) * 1e3:.2f} ms"
    )
    for op, t in sorted(total.items(), key=lambda kv: -kv[1]):
        print(f"  {op:28s} x{count[op]:<4d} {t * 1e3:8.3f} ms {t / count[op] * 1e6:9.1f} us each")


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
