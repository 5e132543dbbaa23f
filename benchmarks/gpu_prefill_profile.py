"""Where a CUDA prefill spends its time: one 2048-token prefill of a synthetic real-size model,
with wall times, and with --kernels a per-kernel summary (torch profiler, CUPTI).

    PYTHONPATH=core:plugins/qwen3_4b_instruct_2507:benchmarks \\
      python benchmarks/gpu_prefill_profile.py 4b [2048] [--kernels]
"""

from __future__ import annotations

import sys

from benchmark_gpu import build_ours, prefill_seconds, real_config

name = sys.argv[1] if len(sys.argv) > 1 else "4b"
n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 2048
model, _ = build_ours(real_config(name))
tokens = [1000 + (i * 7919) % 90000 for i in range(n)]
for _ in range(3):
    print(f"prefill {n}: {prefill_seconds(model, tokens) * 1e3:.1f} ms")

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
