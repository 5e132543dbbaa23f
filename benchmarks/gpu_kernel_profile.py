"""Kernel times of a model's batch-1 decode on the GPU, by CUPTI (``torch.profiler``): every kernel
the CUDA library launches, captured graphs included, summed per kernel name per decoded token.

    python benchmarks/gpu_kernel_profile.py glm:4 next:4 moe:12

(``moe``: Qwen3-Coder-30B-A3B's shapes through the multi-kernel CUDA-graph step, from
``gpu_moe_bench``; ``glm`` and ``next``: the plugins' synthetic checkpoints, captured steps.)

The totals include the prefill of the 32-token prompt; the table lists the 28 kernels of most time.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

import gpu_model_bench


def _plugin_generate(which: str, layers: int) -> Callable[[list[int], int], float]:
    """Greedy decode through a plugin's model on a synthetic checkpoint: tok/s of ``new`` tokens."""
    d, load = gpu_model_bench.checkpoint(which, layers)
    lm = load(d, device="cuda:0")

    def gen(prompt: list[int], new: int) -> float:
        r = lm.generate(prompt, max_new_tokens=new, temperature=0, ignore_eos=True)
        return float(r.decode_tokens_per_s)

    return gen


def _moe_generate(layers: int) -> Callable[[list[int], int], float]:
    """Greedy decode of Qwen3-Coder-30B-A3B's shapes (``layers`` of them) on the CUDA graph."""
    from gpu_moe_bench import _NoText, build_ours, config, cuda_stream_generate

    from inference_pio.sampling import SamplingParams

    model = build_ours(config(layers))

    def gen(prompt: list[int], new: int) -> float:
        params = SamplingParams(temperature=0.0, max_new_tokens=new, ignore_eos=True)
        results: list[Any] = []
        for _ in cuda_stream_generate(model, _NoText(), prompt, params, (), results.append):
            pass
        return float(results[0].decode_tokens_per_s)

    return gen


def profile(which: str, layers: int, new: int = 64) -> None:
    import torch
    from torch.profiler import ProfilerActivity

    gen = _moe_generate(layers) if which == "moe" else _plugin_generate(which, layers)
    rng = random.Random(0)
    prompt = [rng.randrange(1000, 100000) for _ in range(32)]
    gen(prompt, 8)
    with torch.profiler.profile(activities=[ProfilerActivity.CUDA]) as prof:
        rate = gen(prompt, new)
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
