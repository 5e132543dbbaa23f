"""Kernel times of a model's batch-1 decode on the GPU, by CUPTI (``torch.profiler``): every kernel
the CUDA library launches, captured graphs included, summed per kernel name per decoded token.

    python benchmarks/gpu_kernel_profile.py glm:4 next:4

The totals include the prefill of the 32-token prompt; the table lists the 28 kernels of most time.
"""

from __future__ import annotations

import random
import sys

import gpu_model_bench


def profile(which: str, layers: int, new: int = 64) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    d, load = gpu_model_bench.checkpoint(which, layers)
    lm = load(d, device="cuda:0")
    rng = random.Random(0)
    prompt = [rng.randrange(1000, 100000) for _ in range(32)]
    lm.generate(prompt, max_new_tokens=8, temperature=0, ignore_eos=True)
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        r = lm.generate(prompt, max_new_tokens=new, temperature=0, ignore_eos=True)
    rate = r.decode_tokens_per_s
    print(f"{which}, {layers} layers: decode {rate:.1f} tok/s ({1e3 / rate:.3f} ms a token)")
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", 0) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows.append((t, e.count, e.key))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    launches = sum(r[1] for r in rows)
    print(f"  kernels {total / 1e3:.2f} ms in {launches} launches ({total / new:.1f} us a token)")
    print(f"  {'us/token':>9} {'calls':>7} {'us/call':>8}  kernel")
    for t, c, k in rows[:28]:
        print(f"  {t / new:9.1f} {c / new:7.1f} {t / c:8.2f}  {k[:90]}")


def main(argv: list[str]) -> int:
    for arg in argv or ["glm:4", "next:4"]:
        which, layers = arg.split(":")
        profile(which, int(layers))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
